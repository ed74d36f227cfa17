"""Outer optimizers (``sgd``, ``adam``, ``rmsprop``): PyTorch's update rules in TensorFlow,
with the host's options and learning-rate schedule, and their state as plain numpy arrays.

Each class is constructed as ``Cls(params, lr=..., **options)`` with the options the host
declares once for every backend (:mod:`metaplug.contract.hyperparameters`), and updates
with ``torch.optim``'s formulas, so one configuration gives the same numbers on both
backends. The rate of each step is :func:`metaplug.contract.schedules.learning_rate` of
the steps taken (step decay or linear annealing), computed in Python and read by the
compiled step from the float64 variable :attr:`OuterOptimizer.rate`; the step counter
is saved, so a resumed run continues the schedule exactly.

Written out rather than taken from Keras: Keras 3 optimizers build their state lazily
on the first call (which a ``tf.function`` must not do) and keep it in Keras variables
that are not plain arrays. These classes create every slot up front as a
``tf.Variable`` and update inside a compiled meta-step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from metaplug.contract import schedules
from metaplug.contract.hyperparameters import AdamOptions, RMSpropOptions, ScheduleOptions, SGDOptions
from metaplug.contract.options import checked
from metaplug_tensorflow._tf import tf


class OuterOptimizer:
    """Base class: validated ``options``, the step counter ``steps``, the rate of the next
    step ``rate`` (a float64 variable, see :meth:`schedule`), weight decay and the state
    arrays. Subclasses name their per-variable slots in :attr:`slot_names` and write
    :meth:`_update`."""

    Options: ClassVar[type[ScheduleOptions]] = ScheduleOptions

    def __init__(self, params: Sequence[tf.Variable], lr: float = 1e-3, **options: Any) -> None:
        self.options = self.Options.parse(options, owner=f"optimizer {type(self).__name__}")
        self.initial_lr = checked("lr", lr, float, minimum=0, exclusive=True)
        self.variables = list(params)
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps")
        self.rate = tf.Variable(self.initial_lr, dtype=tf.float64, trainable=False, name="rate")
        self.slots: dict[str, list[tf.Variable]] = {
            name: [tf.Variable(tf.zeros_like(v), trainable=False, name=name) for v in self.variables]
            for name in self.slot_names
        }

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The per-variable state (PyTorch's names), zero at the start (default: none)."""
        return ()

    def learning_rate(self) -> float:
        """The rate of the next step, from the steps taken."""
        return schedules.learning_rate(self.initial_lr, int(self.steps.numpy()), self.options)

    def schedule(self) -> None:
        """Set :attr:`rate` to :meth:`learning_rate`. A compiled step cannot run Python, so
        whoever compiles :meth:`apply` calls this before each call (``MetaLearner`` does);
        an eager :meth:`apply` calls it itself. A constant rate is set once, at construction
        (no per-step read of :attr:`steps` and write of :attr:`rate`)."""
        if not self.options.constant:
            self.rate.assign(self.learning_rate())

    def apply(self, grads: Sequence[tf.Tensor | None]) -> None:
        """One update of every variable from its gradient (graph-safe); a variable whose
        gradient is ``None`` (frozen) is skipped, its slots untouched, as ``torch.optim`` does."""
        if tf.executing_eagerly():
            self.schedule()
        step = self.steps + 1
        for i, (var, grad) in enumerate(zip(self.variables, grads, strict=True)):
            if grad is None:
                continue
            if self.options.weight_decay:
                grad = grad + self.options.weight_decay * var
            self._update(i, var, grad, tf.cast(self.rate, var.dtype), step)
        self.steps.assign(step)

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"steps": array, slot name: [array per variable]}``."""
        state: dict[str, Any] = {"steps": np.asarray(self.steps.numpy(), dtype=np.int64)}
        for name, slots in self.slots.items():
            state[name] = [s.numpy() for s in slots]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps.assign(int(np.asarray(state["steps"])))
        for name, slots in self.slots.items():
            for slot, value in zip(slots, state[name], strict=True):
                slot.assign(np.asarray(value, dtype=slot.dtype.as_numpy_dtype))


class SGD(OuterOptimizer):
    """``p -= lr * g``; with momentum ``b = m b + g`` (PyTorch's, no dampening), Nesterov optional."""

    Options = SGDOptions
    options: SGDOptions

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.options.momentum else ()

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        momentum = self.options.momentum
        if momentum:
            buf = self.slots["momentum_buffer"][i]
            buf.assign(momentum * buf + grad)
            grad = grad + momentum * buf if self.options.nesterov else buf
        var.assign_sub(lr * grad)


class Adam(OuterOptimizer):
    """Adam with bias correction, ``eps`` added to the corrected root (PyTorch's form); with
    ``amsgrad`` the root of the largest second moment so far (Reddi et al. 2018)."""

    Options = AdamOptions
    options: AdamOptions

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.options.amsgrad else ("exp_avg", "exp_avg_sq")

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        beta1, beta2 = self.options.betas
        m, v = self.slots["exp_avg"][i], self.slots["exp_avg_sq"][i]
        m.assign(beta1 * m + (1 - beta1) * grad)
        v.assign(beta2 * v + (1 - beta2) * tf.square(grad))
        second = v
        if self.options.amsgrad:
            second = self.slots["max_exp_avg_sq"][i]
            second.assign(tf.maximum(second, v))
        t = tf.cast(step, var.dtype)
        correction1 = 1 - tf.pow(tf.constant(beta1, var.dtype), t)
        correction2 = 1 - tf.pow(tf.constant(beta2, var.dtype), t)
        denom = tf.sqrt(second) / tf.sqrt(correction2) + self.options.eps
        var.assign_sub(lr / correction1 * m / denom)


class RMSprop(OuterOptimizer):
    """``v = alpha v + (1 - alpha) g^2``; ``p -= lr g / (sqrt(v) + eps)``, momentum optional;
    ``centered`` divides by ``sqrt(v - a^2)`` instead, ``a`` the average gradient (PyTorch's form)."""

    Options = RMSpropOptions
    options: RMSpropOptions

    @property
    def slot_names(self) -> tuple[str, ...]:
        return (
            ("square_avg",)
            + (("momentum_buffer",) if self.options.momentum else ())
            + (("grad_avg",) if self.options.centered else ())
        )

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        alpha, momentum = self.options.alpha, self.options.momentum
        v = self.slots["square_avg"][i]
        v.assign(alpha * v + (1 - alpha) * tf.square(grad))
        if self.options.centered:
            mean = self.slots["grad_avg"][i]
            mean.assign(mean + (1 - alpha) * (grad - mean))  # torch's lerp
            root = tf.sqrt(v - tf.square(mean))
        else:
            root = tf.sqrt(v)
        update = grad / (root + self.options.eps)
        if momentum:
            buf = self.slots["momentum_buffer"][i]
            buf.assign(momentum * buf + update)
            update = buf
        var.assign_sub(lr * update)

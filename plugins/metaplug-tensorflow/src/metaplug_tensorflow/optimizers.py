"""Outer optimizers (``role="outer"``): SGD, Adam and RMSprop with a step-decay schedule.

Written out in TensorFlow rather than taken from Keras: Keras 3 optimizers keep
their state in Keras variables, build it lazily on the first call (which a
``tf.function`` must not do) and do not offer their slots as plain arrays. These
classes create every slot up front as a ``tf.Variable``, update inside a compiled
meta-step, and expose their whole state (step counter included, which drives the
schedule) as numpy arrays, so a resumed run continues exactly. The update rules are
PyTorch's (``torch.optim``), with the same option names and defaults, so one
configuration gives the same numbers on both backends.

Each factory is ``factory(variables, *, lr, **options)`` with two optional schedules:
``decay_every`` (0: constant rate) and ``decay_rate``, the learning rate being
``lr * decay_rate ** (steps_taken // decay_every)``; or ``final_lr`` and ``anneal_steps``,
the rate annealed linearly from ``lr`` to ``final_lr`` over ``anneal_steps`` steps and
constant after (``frac * final_lr + (1 - frac) * lr``, ``frac = min(steps_taken /
anneal_steps, 1)``: supervised-reptile's meta step size schedule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf


class OuterOptimizer:
    """Base class: the step counter, the schedule, weight decay and the state arrays."""

    slot_names: tuple[str, ...] = ()

    def __init__(self, variables: Sequence[tf.Variable], lr: float, weight_decay: float = 0.0,
                 decay_every: int = 0, decay_rate: float = 0.5, final_lr: float | None = None,
                 anneal_steps: int = 0) -> None:
        if not lr > 0:
            raise ConfigError(f"learning rate must be positive, got {lr}")
        if int(decay_every) != decay_every or decay_every < 0:
            raise ConfigError(f"decay_every must be a non-negative integer, got {decay_every}")
        if not 0 < decay_rate <= 1:
            raise ConfigError(f"decay_rate must be in (0, 1], got {decay_rate}")
        if weight_decay < 0:
            raise ConfigError(f"weight_decay must be non-negative, got {weight_decay}")
        if isinstance(anneal_steps, bool) or int(anneal_steps) != anneal_steps or anneal_steps < 0:
            raise ConfigError(f"anneal_steps must be a non-negative integer, got {anneal_steps}")
        if final_lr is None and anneal_steps:
            raise ConfigError(f"anneal_steps ({anneal_steps!r}) needs final_lr, the learning rate to anneal to")
        if final_lr is not None:
            if isinstance(final_lr, bool) or not isinstance(final_lr, int | float) or not final_lr >= 0:
                raise ConfigError(f"final_lr must be a non-negative number, got {final_lr!r}")
            if anneal_steps < 1:
                raise ConfigError("final_lr needs anneal_steps >= 1 (the steps over which the rate is annealed)")
            if decay_every:
                raise ConfigError("final_lr (linear annealing) and decay_every (step decay) cannot be combined")
        self.final_lr = None if final_lr is None else float(final_lr)
        self.anneal_steps = int(anneal_steps)
        self.variables = list(variables)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.decay_every, self.decay_rate = int(decay_every), float(decay_rate)
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps")
        self.slots: dict[str, list[tf.Variable]] = {
            name: [tf.Variable(tf.zeros_like(v), trainable=False, name=name) for v in self.variables]
            for name in self.slot_names
        }

    def learning_rate(self) -> tf.Tensor:
        """The scheduled rate for the next step (float64 scalar)."""
        lr = tf.constant(self.lr, tf.float64)
        if self.decay_every:
            decays = tf.cast(self.steps // self.decay_every, tf.float64)
            lr *= tf.pow(tf.constant(self.decay_rate, tf.float64), decays)
        if self.final_lr is not None:  # as Python computes it: float64 throughout
            frac = tf.minimum(tf.cast(self.steps, tf.float64) / self.anneal_steps, 1.0)
            lr = frac * self.final_lr + (1 - frac) * lr
        return lr

    def apply(self, grads: Sequence[tf.Tensor]) -> None:
        """One update of every variable from its gradient (graph-safe)."""
        lr = self.learning_rate()
        step = self.steps + 1
        for i, (var, grad) in enumerate(zip(self.variables, grads, strict=True)):
            if grad is None:
                raise ValueError(f"no gradient for variable {var.name}")
            if self.weight_decay:
                grad = grad + self.weight_decay * var
            self._update(i, var, grad, tf.cast(lr, var.dtype), step)
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

    def __init__(self, variables: Sequence[tf.Variable], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, **options: Any) -> None:
        if momentum < 0:
            raise ConfigError(f"momentum must be non-negative, got {momentum}")
        if nesterov and not momentum:
            raise ConfigError("nesterov needs a positive momentum")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.slot_names = ("momentum_buffer",) if momentum else ()
        super().__init__(variables, lr, **options)

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        if self.momentum:
            buf = self.slots["momentum_buffer"][i]
            buf.assign(self.momentum * buf + grad)
            grad = grad + self.momentum * buf if self.nesterov else buf
        var.assign_sub(lr * grad)


class Adam(OuterOptimizer):
    """Adam with bias correction, ``eps`` added to the corrected root (PyTorch's form)."""

    slot_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, variables: Sequence[tf.Variable], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, **options: Any) -> None:
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ConfigError(f"betas must be in [0, 1), got {tuple(betas)}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        super().__init__(variables, lr, **options)

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        m, v = self.slots["exp_avg"][i], self.slots["exp_avg_sq"][i]
        m.assign(self.beta1 * m + (1 - self.beta1) * grad)
        v.assign(self.beta2 * v + (1 - self.beta2) * tf.square(grad))
        t = tf.cast(step, var.dtype)
        correction1 = 1 - tf.pow(tf.constant(self.beta1, var.dtype), t)
        correction2 = 1 - tf.pow(tf.constant(self.beta2, var.dtype), t)
        denom = tf.sqrt(v) / tf.sqrt(correction2) + self.eps
        var.assign_sub(lr / correction1 * m / denom)


class RMSprop(OuterOptimizer):
    """``v = alpha v + (1 - alpha) g^2``; ``p -= lr g / (sqrt(v) + eps)``, momentum optional."""

    def __init__(self, variables: Sequence[tf.Variable], lr: float, alpha: float = 0.99,
                 eps: float = 1e-8, momentum: float = 0.0, **options: Any) -> None:
        if not 0 <= alpha < 1:
            raise ConfigError(f"alpha must be in [0, 1), got {alpha}")
        if momentum < 0:
            raise ConfigError(f"momentum must be non-negative, got {momentum}")
        self.alpha, self.eps, self.momentum = float(alpha), float(eps), float(momentum)
        self.slot_names = ("square_avg", "momentum_buffer") if momentum else ("square_avg",)
        super().__init__(variables, lr, **options)

    def _update(self, i: int, var: tf.Variable, grad: tf.Tensor, lr: tf.Tensor, step: tf.Tensor) -> None:
        v = self.slots["square_avg"][i]
        v.assign(self.alpha * v + (1 - self.alpha) * tf.square(grad))
        update = grad / (tf.sqrt(v) + self.eps)
        if self.momentum:
            buf = self.slots["momentum_buffer"][i]
            buf.assign(self.momentum * buf + update)
            update = buf
        var.assign_sub(lr * update)


def _factory(cls: type[OuterOptimizer], variables: Sequence[tf.Variable], lr: float,
             options: dict[str, Any]) -> OuterOptimizer:
    try:
        return cls(variables, lr, **options)
    except TypeError as exc:
        raise ConfigError(f"bad option for optimizer {cls.__name__}: {exc}") from None


def sgd(variables: Sequence[tf.Variable], *, lr: float = 1e-3, **options: Any) -> OuterOptimizer:
    """SGD; options ``momentum``, ``nesterov``, ``weight_decay``, ``decay_every``, ``decay_rate``,
    ``final_lr``, ``anneal_steps``."""
    return _factory(SGD, variables, lr, options)


def adam(variables: Sequence[tf.Variable], *, lr: float = 1e-3, **options: Any) -> OuterOptimizer:
    """Adam; options ``betas``, ``eps``, ``weight_decay``, ``decay_every``, ``decay_rate``,
    ``final_lr``, ``anneal_steps``."""
    return _factory(Adam, variables, lr, options)


def rmsprop(variables: Sequence[tf.Variable], *, lr: float = 1e-3, **options: Any) -> OuterOptimizer:
    """RMSprop; options ``alpha``, ``eps``, ``momentum``, ``weight_decay``, ``decay_every``,
    ``decay_rate``, ``final_lr``, ``anneal_steps``."""
    return _factory(RMSprop, variables, lr, options)

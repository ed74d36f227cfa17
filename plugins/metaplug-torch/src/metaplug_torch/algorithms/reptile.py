"""Reptile (Nichol et al. 2018): move the initialisation towards task-adapted weights.

Besides plain full-batch SGD (the default), the inner loop can follow the authors' code
(github.com/openai/supervised-reptile, ``supervised_reptile/reptile.py``): Adam whose
state persists from task to task, mini-batches drawn as its ``_mini_batches``, and
non-transductive evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from metaplug.contract.hyperparameters import ReptileOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.contract.minibatches import EVAL, TRAIN, MiniBatchDraws
from metaplug.errors import ConfigError
from metaplug_torch import batching
from metaplug_torch.algorithms.base import _numpy
from metaplug_torch.algorithms.gradient import GradientMetaLearner, Params
from metaplug_torch.backend import Episodes
from metaplug_torch.losses import task_loss


@dataclass(frozen=True)
class AdamState:
    """The inner Adam's slots: first and second moments per parameter, and the step count."""

    m: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    t: int

    def detached(self) -> AdamState:
        """The same state cut from any autograd graph."""
        return AdamState({n: m.detach() for n, m in self.m.items()}, {n: v.detach() for n, v in self.v.items()}, self.t)


def adam_step(
    params: Params, grads: Params, state: AdamState, lr: float, beta1: float, beta2: float, epsilon: float
) -> tuple[dict[str, torch.Tensor], AdamState]:
    """One step of TF1's ``tf.train.AdamOptimizer``: ``t += 1``, ``m = b1 m + (1 - b1) g``,
    ``v = b2 v + (1 - b2) g^2``, ``p -= lr_t m / (sqrt(v) + eps)`` with
    ``lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)`` (computed in Python floats)."""
    t = state.t + 1
    m = {n: beta1 * state.m[n] + (1 - beta1) * g for n, g in grads.items()}
    v = {n: beta2 * state.v[n] + (1 - beta2) * g * g for n, g in grads.items()}
    lr_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    return {n: p - lr_t * m[n] / (v[n].sqrt() + epsilon) for n, p in params.items()}, AdamState(m, v, t)


class Reptile(GradientMetaLearner):
    """Reptile: ``inner_steps`` inner steps on each support set give ``phi_i``; the outer
    optimizer gets ``theta - mean_i(phi_i)`` as its gradient (with SGD at rate ``eps``, the
    update ``theta + eps (mean phi - theta)``). The reported loss is the query loss at ``phi_i``.

    ``inner_optimizer`` is ``"sgd"`` (``p - inner_lr * grad``) or ``"adam"``: TF1's Adam
    (:func:`adam_step`, ``adam_beta1``, ``adam_beta2``, ``adam_epsilon``) whose state, as in
    the authors' code, is never reset: meta-training adapts the tasks of a batch one after
    another (whatever ``batching`` says), each continuing the state the previous task left;
    ``evaluate`` and ``adapt`` start every task from that state and leave it unchanged.

    ``inner_batch_size`` (in ``evaluate``/``adapt``: ``options.evaluation_batch_size``,
    ``test_inner_batch_size`` or else the same) makes each inner step use that many support
    examples, drawn by :class:`metaplug.contract.minibatches.MiniBatchDraws` (``None``: the
    whole support set) from ``torch.initial_seed()`` at construction (the run's seed); the
    counters are in the state, so resuming is exact.
    """

    name = "reptile"
    Options = ReptileOptions
    options: ReptileOptions

    def setup(self) -> None:
        """The inner Adam's state (with ``inner_optimizer="adam"``) and the mini-batch draws."""
        self.inner_adam: AdamState | None = None
        if self.options.inner_optimizer == "adam":
            zeros = {n: torch.zeros_like(p.detach()) for n, p in self.params.items()}
            self.inner_adam = AdamState(zeros, dict(zeros), 0)
        self.batches = MiniBatchDraws(
            torch.initial_seed(), self.options.inner_batch_size, self.options.evaluation_batch_size
        )

    # -- the inner loop ------------------------------------------------------------------
    def adapt_with(
        self,
        params: Params,
        sx: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        batches: torch.Tensor | None,
        adam: AdamState | None,
    ) -> tuple[Params, AdamState | None]:
        """The weights after ``steps`` first-order inner steps on the support set from
        ``params``, and the inner Adam state after them (``None`` with SGD). ``batches``
        (``(steps, batch)`` indices) picks each step's examples; ``None``: all of them."""
        if batches is None and adam is None:
            return self.adapt_task(params, {}, sx, sy, steps, second_order=False), None
        o = self.options
        fast = {n: params[n] for n in self.model.names}
        for step in range(steps):
            x, y = (sx, sy) if batches is None else (sx[batches[step]], sy[batches[step]])
            grads = self._gradients(params, fast, x, y)
            if adam is None:
                fast = self.rule.step(fast, grads, {}, o.inner_lr)
            else:
                stepped, adam = adam_step(fast, grads, adam, o.inner_lr, o.adam_beta1, o.adam_beta2, o.adam_epsilon)
                fast = {n: p if n in self.freezing.adaptation else stepped[n] for n, p in fast.items()}
        return fast, adam

    def _gradients(self, params: Params, fast: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        def loss(point: Params) -> torch.Tensor:
            return task_loss(self.spec.problem, self.task_output(params, point, x), y)

        if self.mode == "vectorized":
            return torch.func.grad(loss)({n: p.detach() for n, p in fast.items()})
        with torch.enable_grad():
            point = {n: p.detach().requires_grad_() for n, p in fast.items()}
            found = torch.autograd.grad(loss(point), list(point.values()))
        return dict(zip(point, found, strict=True))

    def draws(self, stream: int, tasks: int, steps: int, size: int) -> torch.Tensor | None:
        """``(tasks, steps, batch)`` mini-batch indices for the next ``tasks`` tasks of
        ``stream`` with ``size`` support examples (``None`` without mini-batches); counts them."""
        rows = self.batches.draw(stream, tasks, steps, size)
        return None if rows is None else torch.from_numpy(rows).to(self.device)

    # -- meta-training ------------------------------------------------------------------
    def _train_task(
        self,
        shared: tuple[Params, Params],
        sx: torch.Tensor,
        sy: torch.Tensor,
        qx: torch.Tensor,
        qy: torch.Tensor,
        batches: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        params, _ = shared
        fast, adam = self.adapt_with(params, sx, sy, self.options.inner_steps, batches, self.inner_adam)
        if adam is not None:  # tasks run one after another: the next one continues this state
            self.inner_adam = adam.detached()
        loss, acc = self.loss_and_accuracy(self.task_output(params, fast, qx), qy)
        return (loss.detach(), acc.detach(), *(fast[n].detach() for n in self.model.names))

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks: tuple[torch.Tensor, ...] = (data.support_x, data.support_y, data.query_x, data.query_y)
        draws = self.draws(TRAIN, len(data.support_x), self.options.inner_steps, data.support_x.shape[1])
        tasks += () if draws is None else (draws,)
        shared = self.evaluation_parameters()
        if self.inner_adam is None:
            outputs = self.map_tasks(self._train_task, shared, tasks)
        else:
            mode = "loop" if self.mode == "vectorized" else self.mode
            outputs = batching.map_tasks(self._train_task, shared, tasks, mode)
        for param, adapted in zip(self.params.values(), outputs[2:], strict=True):
            param.grad = param.detach() - adapted.mean(0)
        return outputs[:2]

    # -- evaluation ---------------------------------------------------------------------
    def evaluation_tasks(self, data: Episodes, steps: int) -> tuple[torch.Tensor, ...]:
        draws = self.draws(EVAL, len(data.support_x), steps, data.support_x.shape[1])
        return super().evaluation_tasks(data, steps) + (() if draws is None else (draws,))

    def evaluate_task(
        self,
        shared: tuple[Params, Params],
        sx: torch.Tensor,
        sy: torch.Tensor,
        qx: torch.Tensor,
        qy: torch.Tensor,
        steps: int,
        batches: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the base's; ``batches`` (from :meth:`evaluation_tasks`) are the task's
        mini-batch indices, when there are any."""
        params, _ = shared
        start = {n: params[n] for n in self.model.names}
        before, _ = self.loss_and_accuracy(self.query_output(params, start, sx, qx), qy)
        fast, _ = self.adapt_with(params, sx, sy, steps, batches, self.inner_adam)
        loss, acc = self.loss_and_accuracy(self.query_output(params, fast, sx, qx), qy)
        return loss.detach(), before.detach(), acc.detach()

    def adapt_support(
        self, params: Params, learnables: Params, sx: torch.Tensor, sy: torch.Tensor, steps: int
    ) -> Params:
        """For :meth:`adapt`: the next evaluation mini-batches, from the inner Adam state left
        by training (unchanged)."""
        draws = self.draws(EVAL, 1, steps, len(sx))
        fast, _ = self.adapt_with(params, sx, sy, steps, None if draws is None else draws[0], self.inner_adam)
        return fast

    # -- state --------------------------------------------------------------------------
    def inner_state(self) -> dict[str, np.ndarray]:
        """``inner_adam.{m,v}.<parameter>`` and ``inner_adam.t`` (with Adam);
        ``inner_batches.seed``, ``inner_batches.train`` and ``inner_batches.eval`` (the
        draw counters, with mini-batches)."""
        state: dict[str, np.ndarray] = {}
        if self.inner_adam is not None:
            for slot in ("m", "v"):
                state.update({f"inner_adam.{slot}.{n}": _numpy(t) for n, t in getattr(self.inner_adam, slot).items()})
            state["inner_adam.t"] = np.asarray(self.inner_adam.t, dtype=np.int64)
        return {**state, **self.batches.state()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The base entries and :meth:`inner_state`."""
        return {**super().state_dict(), **self.inner_state()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:  # type: ignore[override]
        own = self.inner_state()
        missing = [k for k in own if k not in state]
        if missing:
            raise ConfigError(f"state has no entry {missing[0]!r} ({len(missing)} missing)")
        for key, value in own.items():
            if np.shape(state[key]) != value.shape:
                raise ConfigError(f"state entry {key!r} has shape {np.shape(state[key])}, expected {value.shape}")
        super().load_state_dict({k: v for k, v in state.items() if k not in own})
        if self.inner_adam is not None:
            m, v = (
                {
                    n: torch.as_tensor(np.array(state[f"inner_adam.{slot}.{n}"]), dtype=self.dtype, device=self.device)
                    for n in self.model.names
                }
                for slot in ("m", "v")
            )
            self.inner_adam = AdamState(m, v, int(state["inner_adam.t"]))
        self.batches.load_state(state)

"""Inner-loop update rules (the ``role="inner"`` optimizers) and the inner loop itself.

A rule implements :class:`metaplug.contract.interfaces.InnerRule`: a class constructed
with no arguments, with ``init(params, lr)`` and ``step(params, grads, learnables, lr)``
on name-keyed mappings of tensors. Register it under the ``optimizers`` kind with
``role="inner"`` and ``backends=("torch",)``; ``maml``, ``fomaml``, ``anil``, ``metasgd``
and ``mamlpp`` name it in their ``inner_rule`` option, and the host passes the instance as
``rule=``. Rules must be pure functions of their inputs (no in-place updates, no
randomness) so that they work under ``torch.func.vmap`` and can be differentiated
through::

    class InnerSignSGD:
        def init(self, params, lr):
            return {}                              # nothing learned
        def step(self, params, grads, learnables, lr):
            return {n: p - lr * grads[n].sign() for n, p in params.items()}

A rule with per-task state (``inner-adam``, ``inner-rmsprop``) also implements
``init_state(params)`` and ``step_with_state(params, grads, learnables, lr, state)``
(:class:`metaplug.contract.interfaces.StatefulInnerRule`); the inner loop starts it afresh
for every task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from metaplug.contract.interfaces import InnerRule, apply_rule, initial_state, resolve_inner_rule
from metaplug_torch.models import ReplayedForwards

Params = Mapping[str, torch.Tensor]


class InnerSGD:
    """Plain gradient descent ``p - lr * grad``."""

    def init(self, params: Params, lr: float) -> dict[str, torch.Tensor]:
        return {}

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, torch.Tensor]:
        return {n: p - lr * grads[n] for n, p in params.items()}


class InnerMetaSGD:
    """Meta-SGD: ``p - alpha * grad`` with a learned rate ``alpha`` per parameter entry,
    initialised to ``lr`` (Li et al. 2017)."""

    def init(self, params: Params, lr: float) -> dict[str, torch.Tensor]:
        return {n: torch.full_like(p.detach(), lr) for n, p in params.items()}

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, torch.Tensor]:
        return {n: p - learnables[n] * grads[n] for n, p in params.items()}


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a zero derivative at 0 (not infinity): a parameter whose
    gradient is exactly zero (a conv bias before batch norm) keeps finite second-order terms."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


class InnerAdam:
    """Adam (Kingma and Ba 2015) as a differentiable inner rule, in PyTorch's form:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p - lr / (1 - b1^t) * m /
    (sqrt(v) / sqrt(1 - b2^t) + eps)``. The moments are per-task state, zero at the start of
    every adaptation; second-order MAML differentiates through them."""

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas, self.eps = betas, eps

    def init(self, params: Params, lr: float) -> dict[str, torch.Tensor]:
        return {}

    def init_state(self, params: Params) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
        return {n: (0, torch.zeros_like(p), torch.zeros_like(p)) for n, p in params.items()}

    def step_with_state(
        self, params: Params, grads: Params, learnables: Params, lr: Any, state: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        beta1, beta2 = self.betas
        new, after = {}, {}
        for n, p in params.items():
            t, m, v = state[n]
            g, t = grads[n], t + 1
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            denom = safe_sqrt(v) / math.sqrt(1 - beta2**t) + self.eps
            new[n] = p - (lr / (1 - beta1**t)) * m / denom
            after[n] = (t, m, v)
        return new, after

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, torch.Tensor]:
        return self.step_with_state(params, grads, learnables, lr, self.init_state(params))[0]


class InnerRMSprop:
    """RMSprop as a differentiable inner rule, in PyTorch's form (no momentum, not centred):
    ``v = alpha v + (1 - alpha) g^2``, ``p - lr * g / (sqrt(v) + eps)``. The average is per-task
    state, zero at the start of every adaptation; second-order MAML differentiates through it."""

    def __init__(self, alpha: float = 0.99, eps: float = 1e-8) -> None:
        self.alpha, self.eps = alpha, eps

    def init(self, params: Params, lr: float) -> dict[str, torch.Tensor]:
        return {}

    def init_state(self, params: Params) -> dict[str, torch.Tensor]:
        return {n: torch.zeros_like(p) for n, p in params.items()}

    def step_with_state(
        self, params: Params, grads: Params, learnables: Params, lr: Any, state: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        new, after = {}, {}
        for n, p in params.items():
            g = grads[n]
            v = self.alpha * state[n] + (1 - self.alpha) * g * g
            new[n] = p - lr * g / (safe_sqrt(v) + self.eps)
            after[n] = v
        return new, after

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, torch.Tensor]:
        return self.step_with_state(params, grads, learnables, lr, self.init_state(params))[0]


BUILTIN_RULES: dict[str, type[InnerRule]] = {
    "inner-sgd": InnerSGD,
    "inner-metasgd": InnerMetaSGD,
    "inner-adam": InnerAdam,
    "inner-rmsprop": InnerRMSprop,
}
"""The rules an algorithm built directly in Python (without ``rule=``) finds by name."""


def resolve_rule(rule: InnerRule | None, name: str | None, algorithm: str) -> InnerRule:
    """The inner rule of ``algorithm`` whose ``inner_rule`` option is ``name`` (see
    :func:`metaplug.contract.interfaces.resolve_inner_rule`; :class:`InnerSGD` without that
    option)."""
    return resolve_inner_rule(rule, name, BUILTIN_RULES, InnerSGD, algorithm, "metaplug-torch")


def inner_gradients(
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor], fast: Params, *, second_order: bool, functional: bool
) -> dict[str, torch.Tensor]:
    """The gradients of ``loss`` at ``fast``, by name: with ``torch.func.grad`` when
    ``functional`` (works under ``vmap``), else ``torch.autograd.grad``; constants unless
    ``second_order``."""
    if functional:
        point = dict(fast) if second_order else {n: p.detach() for n, p in fast.items()}
        grads = torch.func.grad(loss)(point)
    else:
        with torch.enable_grad():
            values = list(fast.values())
            found = torch.autograd.grad(loss(dict(fast)), values, create_graph=second_order)
        grads = dict(zip(fast, found, strict=True))
    if not second_order:
        grads = {n: g.detach() for n, g in grads.items()}
    return grads


def inner_loop(
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    params: Params,
    rule: InnerRule,
    learnables: Params,
    lr: float,
    steps: int,
    *,
    second_order: bool,
    functional: bool = True,
) -> dict[str, torch.Tensor]:
    """Adapt ``params`` with ``steps`` steps of ``rule`` on ``loss``.

    ``functional`` computes gradients with ``torch.func.grad`` (works under
    ``vmap``); otherwise with ``torch.autograd.grad`` on tensors that require
    gradients (the per-task loops). With ``second_order`` the result stays
    differentiable through the gradients; otherwise they are constants
    (first-order approximation; the rule's learnables still get gradients). A stateful
    rule (:class:`~metaplug.contract.interfaces.StatefulInnerRule`) starts from a fresh
    state, threaded through the steps.
    """
    fast = dict(params)
    state = initial_state(rule, fast)
    for _ in range(steps):
        grads = inner_gradients(loss, fast, second_order=second_order, functional=functional)
        fast, state = apply_rule(rule, fast, grads, learnables, lr, state)
    return fast


StepFn = Callable[[list[torch.Tensor], bool], tuple[torch.Tensor, ...]]
"""One inner step from explicit tensors: ``step(tensors, create_graph)`` returns the new
adapted tensors; ``create_graph`` says whether the step's own gradient must stay
differentiable."""


class _RecomputedStep(torch.autograd.Function):
    """One inner step that stores only its inputs: the forward pass computes the step
    without a graph, the backward pass computes it again with one (second order) and
    back-propagates through it."""

    @staticmethod
    def forward(ctx: Any, step: StepFn, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.step, ctx.replay = step, ReplayedForwards()
        ctx.save_for_backward(*tensors)
        with torch.enable_grad():
            return tuple(t.detach() for t in step(_leaves(tensors), False))

    @staticmethod
    def backward(ctx: Any, *upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs = _leaves(ctx.saved_tensors)
        with torch.enable_grad(), ctx.replay:  # the forward's random draws and execution style
            outputs = ctx.step(inputs, True)
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad and ctx.needs_input_grad[1 + i]]
        found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], upstream, allow_unused=True)
        grads: list[torch.Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, found, strict=True):
            grads[i] = g
        return (None, *grads)


def _leaves(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]


def recomputed_steps(
    step: StepFn, adapted: Sequence[torch.Tensor], context: Sequence[torch.Tensor], steps: int
) -> list[torch.Tensor]:
    """``steps`` second-order inner steps whose graphs are not stored: each keeps only its
    inputs (the adapted tensors and ``context``, every other tensor the step reads, e.g. the
    support inputs, labels, non-adapted weights and the rule's learnables) and is recomputed
    in the backward pass, so memory does not grow with ``steps``. The recomputation runs
    in the step's first execution style and draws its random masks again
    (:class:`metaplug_torch.models.ReplayedForwards`), so the meta-gradient is the stored
    loop's. ``step`` receives ``[*adapted, *context]``."""
    current = list(adapted)
    for _ in range(steps):
        current = list(_RecomputedStep.apply(step, *current, *context))
    return current

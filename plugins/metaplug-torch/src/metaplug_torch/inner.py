"""Inner-loop update rules (the ``role="inner"`` optimizers) and the inner loop itself.

A rule implements :class:`metaplug.contract.interfaces.InnerRule`: a class constructed
with no arguments, with ``init(params, lr)`` and ``step(params, grads, learnables, lr)``
on name-keyed mappings of tensors. Register it under the ``optimizers`` kind with
``role="inner"`` and ``backends=("torch",)``; ``maml``, ``fomaml``, ``anil`` and
``metasgd`` name it in their ``inner_rule`` option, and the host passes the instance as
``rule=``. Rules must be pure functions of their inputs (no in-place updates, no
randomness) so that they work under ``torch.func.vmap`` and can be differentiated
through::

    class InnerSignSGD:
        def init(self, params, lr):
            return {}                              # nothing learned
        def step(self, params, grads, learnables, lr):
            return {n: p - lr * grads[n].sign() for n, p in params.items()}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from metaplug.contract.interfaces import InnerRule, resolve_inner_rule

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


BUILTIN_RULES: dict[str, type[InnerRule]] = {"inner-sgd": InnerSGD, "inner-metasgd": InnerMetaSGD}
"""The rules an algorithm built directly in Python (without ``rule=``) finds by name."""


def resolve_rule(rule: InnerRule | None, name: str | None, algorithm: str) -> InnerRule:
    """The inner rule of ``algorithm`` whose ``inner_rule`` option is ``name`` (see
    :func:`metaplug.contract.interfaces.resolve_inner_rule`; :class:`InnerSGD` without that
    option)."""
    return resolve_inner_rule(rule, name, BUILTIN_RULES, InnerSGD, algorithm, "metaplug-torch")


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
    (first-order approximation; the rule's learnables still get gradients).
    """
    fast = dict(params)
    for _ in range(steps):
        if functional:
            point = fast if second_order else {n: p.detach() for n, p in fast.items()}
            grads = torch.func.grad(loss)(point)
        else:
            with torch.enable_grad():
                values = list(fast.values())
                found = torch.autograd.grad(loss(fast), values, create_graph=second_order)
            grads = dict(zip(fast, found, strict=True))
        if not second_order:
            grads = {n: g.detach() for n, g in grads.items()}
        fast = rule.step(fast, grads, learnables, lr)
    return fast

"""Shared machinery of the algorithms that adapt by gradient steps (MAML family, Reptile)."""

from __future__ import annotations

from typing import Any

import torch

from metaplug.errors import ConfigError, MetaplugError
from metaplug_torch.algorithms.base import TorchAdapted, TorchAlgorithm, check_count, check_rate
from metaplug_torch.functional import task_loss
from metaplug_torch.inner import InnerRule, inner_loop

Params = dict[str, torch.Tensor]


def load_inner_rule(name: str | InnerRule) -> InnerRule:
    """The inner rule registered as ``name`` for torch, instantiated (an instance passes through)."""
    from metaplug.plugins import registry

    if not isinstance(name, str):
        if not isinstance(name, InnerRule):
            raise ConfigError(f"inner_rule must be a rule name or an object with init() and step(), "
                              f"got {type(name).__name__}")
        return name
    try:
        record = registry().get("optimizers", name, backend="torch")
    except MetaplugError as exc:
        raise ConfigError(f"inner_rule {name!r}: {exc}") from None
    if record.role != "inner":
        inner = sorted(c.name for c in registry().records("optimizers") if c.role == "inner" and "torch" in c.backends)
        raise ConfigError(f"inner_rule {name!r} is an outer optimizer; inner rules: {', '.join(inner)}")
    rule = record.load()()
    if not isinstance(rule, InnerRule):
        raise ConfigError(f"inner_rule {name!r} does not implement init() and step()")
    return rule


class GradientAdaptation(TorchAlgorithm):
    """Adapts the parameters named by :meth:`_adapted_names` with ``inner_steps`` steps of
    an inner rule on the support loss.

    A task's computation is split into ``_inputs`` (what is computed once from the
    meta-parameters, e.g. ANIL's embedding) and ``_output`` (the part that depends on
    the adapted parameters), so the inner loop only recomputes what changes.
    """

    head_only = False

    def __init__(self, backend: Any, model: Any, spec: Any, optimizer: Any, *, inner_lr: float,
                 inner_steps: int, test_inner_steps: int | None, rule: InnerRule, batching: str) -> None:
        self.inner_lr = check_rate("inner_lr", inner_lr)
        self.inner_steps = check_count("inner_steps", inner_steps)
        self.test_inner_steps = self.inner_steps if test_inner_steps is None else check_count(
            "test_inner_steps", test_inner_steps, minimum=0)
        self.rule = rule
        super().__init__(backend, model, spec, optimizer, batching)

    # -- which parameters adapt, and how the model splits around them -------------------
    def _adapted_names(self) -> list[str]:
        if self.head_only:
            self.model.require_parts(self.name)
            return [n for n in self.model.names if n.startswith("head.")]
        return list(self.model.names)

    def _extra_parameters(self) -> dict[str, torch.Tensor]:
        adapted = {n: self.params[n] for n in self._adapted_names()}
        return {f"inner.{n}": t for n, t in self.rule.init(adapted, self.inner_lr).items()}

    def _learnables(self) -> Params:
        return {k[len("inner."):]: v for k, v in self.extra.items()}

    def _inputs(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(params, x) if self.head_only else x

    def _output(self, params: Params, fast: Params, h: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.head(fast, h)
        return self.model({**params, **fast}, h)

    # -- the inner loop ---------------------------------------------------------------
    def _adapt_task(self, params: Params, learnables: Params, h_support: torch.Tensor, sy: torch.Tensor,
                    steps: int, second_order: bool) -> Params:
        start = {n: params[n] for n in self._adapted_names()}
        if self.mode == "reference" and second_order:
            start = {n: p.clone() for n, p in start.items()}

        def support_loss(fast: Params) -> torch.Tensor:
            return task_loss(self.spec.problem, self._output(params, fast, h_support), sy)

        return inner_loop(support_loss, start, self.rule, learnables, self.inner_lr, steps,
                          second_order=second_order, functional=self.mode == "vmap")

    def _evaluation_shared(self) -> Any:
        return self._detached(), {k: v.detach() for k, v in self._learnables().items()}

    def _evaluate_task(self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                       qy: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params, learnables = shared
        h_support, h_query = self._inputs(params, sx), self._inputs(params, qx)
        start = {n: params[n] for n in self._adapted_names()}
        before, _ = self._outputs(self._output(params, start, h_query), qy)
        fast = self._adapt_task(params, learnables, h_support, sy, steps, second_order=False)
        loss, acc = self._outputs(self._output(params, fast, h_query), qy)
        return loss.detach(), before.detach(), acc.detach()

    def adapt(self, support_x: Any, support_y: Any, steps: int | None = None) -> TorchAdapted:
        """Adapt to one task's support set with ``steps`` (default ``test_inner_steps``) inner steps."""
        steps = self._test_steps(steps)
        params, learnables = self._evaluation_shared()
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y, self.dtype)
        fast = self._adapt_task(params, learnables, self._inputs(params, sx), sy, steps, second_order=False)
        fast = {n: p.detach() for n, p in fast.items()}
        frozen = {n: p.detach() for n, p in params.items()}
        return TorchAdapted(lambda x: self._output(frozen, fast, self._inputs(frozen, x)), self.backend, self.dtype)

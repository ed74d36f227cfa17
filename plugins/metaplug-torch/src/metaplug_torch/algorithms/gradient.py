"""Shared machinery of the algorithms that adapt by gradient steps (MAML family, Reptile)."""

from __future__ import annotations

from typing import Any

import torch

from metaplug.contract.hyperparameters import InnerLoopOptions, check_recompute
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner
from metaplug_torch.inner import inner_loop, recomputed_steps
from metaplug_torch.losses import task_loss

Params = dict[str, torch.Tensor]


class GradientMetaLearner(MetaLearner):
    """Adapts the parameters named by :meth:`adapted_names` with ``inner_steps`` steps of
    the inner rule (``self.rule``) on the support loss, at ``inner_lr``.

    With ``transductive=False``, ``evaluate`` and ``adapt`` predict each query example with
    one forward pass over the support examples and that example (batch norm then sees the
    support statistics plus one example), as Nichol et al.'s ``_test_predictions``.

    A task's computation is split into ``task_inputs`` (what is computed once from the
    meta-parameters, e.g. ANIL's embedding) and ``task_output`` (the part that depends on
    the adapted parameters), so the inner loop only recomputes what changes.
    """

    Options: type[InnerLoopOptions] = InnerLoopOptions
    options: InnerLoopOptions
    head_only = False
    """Adapt only ``head.*`` (ANIL)."""

    # -- which parameters adapt, and how the model splits around them -------------------
    def adapted_names(self) -> list[str]:
        """Names (in ``self.params``) of the parameters the inner loop adapts: all of them,
        or ``head.*`` when ``head_only``. Override to adapt another subset."""
        if self.head_only:
            self.model.require_parts(self.name)
            return [n for n in self.model.names if n.startswith("head.")]
        return list(self.model.names)

    def extra_parameters(self) -> dict[str, torch.Tensor]:
        """The inner rule's learned state (e.g. Meta-SGD's rates), saved as ``inner.<name>``."""
        check_recompute(self.options, self.rule)
        adapted = {n: self.params[n] for n in self.adapted_names()}
        return {f"inner.{n}": t for n, t in self.rule.init(adapted, self.options.inner_lr).items()}

    def inner_learnables(self) -> Params:
        """The inner rule's meta-learned tensors (``self.extra``), keyed by parameter name."""
        return {k[len("inner.") :]: v for k, v in self.extra.items()}

    def task_inputs(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """What ``x`` becomes before the adapted parameters act (computed once per task):
        ``features`` of ``x`` when ``head_only``, else ``x`` itself."""
        return self.model.embed(params, x) if self.head_only else x

    def task_output(self, params: Params, fast: Params, h: torch.Tensor) -> torch.Tensor:
        """The model's output on ``h = task_inputs(params, x)`` with the adapted parameters
        ``fast`` (names of :meth:`adapted_names`) in place of those in ``params``."""
        if self.head_only:
            return self.model.head(fast, h)
        return self.model({**params, **fast}, h)

    def query_output(
        self, params: Params, fast: Params, sx: torch.Tensor, qx: torch.Tensor, h_query: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The model's output on the query inputs ``qx`` with ``fast`` in place: one batch of
        queries (``h_query``, when given, is ``task_inputs(params, qx)``) when transductive,
        else row ``j`` is the last output of a pass over ``cat(sx, qx[j:j+1])``."""
        if self.options.transductive:
            return self.task_output(params, fast, self.task_inputs(params, qx) if h_query is None else h_query)
        rows = [
            self.task_output(params, fast, self.task_inputs(params, torch.cat([sx, qx[j : j + 1]])))[-1]
            for j in range(qx.shape[0])
        ]
        return torch.stack(rows)

    # -- the inner loop ---------------------------------------------------------------
    def adapt_task(
        self,
        params: Params,
        learnables: Params,
        h_support: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        second_order: bool,
    ) -> Params:
        """The adapted parameters (names of :meth:`adapted_names`) after ``steps`` inner-rule
        steps on the support loss; differentiable back to ``params`` and ``learnables``
        when ``second_order`` (else the inner gradients are constants)."""
        start = {n: params[n] for n in self.adapted_names()}
        if self.mode == "reference" and second_order:
            start = {n: p.clone() for n, p in start.items()}

        if second_order and getattr(self.options, "recompute_inner", False) and self.mode != "vectorized":
            return self._recomputed_adaptation(params, learnables, start, h_support, sy, steps)

        def support_loss(fast: Params) -> torch.Tensor:
            return task_loss(self.spec.problem, self.task_output(params, fast, h_support), sy)

        return inner_loop(
            support_loss,
            start,
            self.rule,
            learnables,
            self.options.inner_lr,
            steps,
            second_order=second_order,
            functional=self.mode == "vectorized",
        )

    def _recomputed_adaptation(
        self, params: Params, learnables: Params, start: Params, h_support: torch.Tensor, sy: torch.Tensor, steps: int
    ) -> Params:
        """:meth:`adapt_task`'s second-order steps with ``recompute_inner``: every tensor a
        step reads is passed explicitly, so that recomputing it reaches them all."""
        names, others, rates = list(start), [n for n in params if n not in start], list(learnables)

        def step(tensors: list[torch.Tensor], create_graph: bool) -> tuple[torch.Tensor, ...]:
            fast = dict(zip(names, tensors[: len(names)], strict=True))
            h, y, *rest = tensors[len(names) :]
            fixed = dict(zip(others, rest[: len(others)], strict=True))
            rule_state = dict(zip(rates, rest[len(others) :], strict=True))
            loss = task_loss(self.spec.problem, self.task_output(fixed, fast, h), y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
            stepped = self.rule.step(fast, dict(zip(names, grads, strict=True)), rule_state, self.options.inner_lr)
            return tuple(stepped[n] for n in names)

        context = [h_support, sy, *(params[n] for n in others), *(learnables[n] for n in rates)]
        adapted = recomputed_steps(step, [start[n] for n in names], context, steps)
        return dict(zip(names, adapted, strict=True))

    def evaluation_parameters(self) -> Any:
        """``(detached model parameters, detached inner learnables)``."""
        return self.detached_parameters(), {k: v.detach() for k, v in self.inner_learnables().items()}

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params, learnables = shared
        h_support = self.task_inputs(params, sx)
        h_query = self.task_inputs(params, qx) if self.options.transductive else None
        start = {n: params[n] for n in self.adapted_names()}
        before, _ = self.loss_and_accuracy(self.query_output(params, start, sx, qx, h_query), qy)
        fast = self.adapt_task(params, learnables, h_support, sy, steps, second_order=False)
        loss, acc = self.loss_and_accuracy(self.query_output(params, fast, sx, qx, h_query), qy)
        return loss.detach(), before.detach(), acc.detach()

    def adapt(self, support_x: Any, support_y: Any, steps: int | None = None) -> AdaptedModel:
        """Adapt to one task's support set with ``steps`` (default
        ``options.evaluation_steps``) inner steps; the model predicts as
        :meth:`query_output` (with the support set when not transductive)."""
        steps = self.evaluation_steps(steps)
        params, learnables = self.evaluation_parameters()
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y, self.dtype)
        fast = {n: p.detach() for n, p in self.adapt_support(params, learnables, sx, sy, steps).items()}
        frozen = {n: p.detach() for n, p in params.items()}
        forward = lambda x: self.query_output(frozen, fast, sx, x)  # noqa: E731
        return AdaptedModel(forward, self.backend, self.dtype, {**frozen, **fast})

    def adapt_support(
        self, params: Params, learnables: Params, sx: torch.Tensor, sy: torch.Tensor, steps: int
    ) -> Params:
        """The adapted parameters :meth:`adapt` predicts with (one task, no task axis)."""
        return self.adapt_task(params, learnables, self.task_inputs(params, sx), sy, steps, second_order=False)

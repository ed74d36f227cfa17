"""Shared machinery of the algorithms that adapt by gradient steps (MAML family, Reptile)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metaplug.contract.hyperparameters import InnerLoopOptions, check_recompute
from metaplug.contract.interfaces import EpisodeBatch
from metaplug_torch import stacked
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner, _numpy
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
    STACKED_HOOKS = ("task_inputs", "task_output", "adapt_task", "loss_and_accuracy")
    """The per-task methods that the stacked-weights path computes itself (see :meth:`stacked_model`)."""

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

    # -- stacked weights: the vectorized mode on multi-layer perceptrons -------------------
    def stacked_model(self, owner: type, hooks: Sequence[str] = ()) -> stacked.StackedMLP | None:
        """The model's :class:`~metaplug_torch.stacked.StackedMLP` when the ``vectorized``
        mode may run with stacked weights instead of ``vmap``: the model and the inner rule
        qualify (:func:`metaplug_torch.stacked.plan`) and this object's class keeps
        :attr:`STACKED_HOOKS` as defined here and ``hooks`` as ``owner`` defines them (an
        override would be bypassed), and the model computes in its own dtype (``bf16``
        autocasts each call of the model, which the stacked layers bypass); else ``None``."""
        if (
            not stacked.ENABLED
            or self.mode != "vectorized"
            or getattr(self.options, "recompute_inner", False)
            or self.precision.autocast is not None
        ):
            return None
        plans: dict[tuple[type, tuple[str, ...]], stacked.StackedMLP | None] = self.__dict__.setdefault(
            "_stacked_plans", {}
        )
        key = (owner, tuple(hooks))
        if key not in plans:  # the model, rule and class do not change: look once
            cls = type(self)
            kept = all(getattr(cls, h) is getattr(GradientMetaLearner, h) for h in self.STACKED_HOOKS)
            overridden = any(getattr(cls, h) is not getattr(owner, h) for h in hooks)
            plan = stacked.plan(self.model.module, self.rule) if kept and not overridden else None
            layers = () if plan is None else plan.head if self.head_only else plan.layers
            named = {n for layer in layers for n in (layer.weight, layer.bias) if n is not None}
            plans[key] = plan if plan is not None and set(self.adapted_names()) <= named else None
        return plans[key]

    def stacked_inputs(self, plan: stacked.StackedMLP, params: stacked.Params, x: torch.Tensor) -> torch.Tensor:
        """:meth:`task_inputs` of every task's ``x`` ``(T, N, ...)`` at once."""
        return plan.embed(params, x) if self.head_only else x

    def stacked_output(
        self, plan: stacked.StackedMLP, params: stacked.Params, fast: stacked.Params, h: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`task_output` of every task at once, ``fast`` with a task axis."""
        merged = {**params, **fast}
        return plan.run(plan.head, merged, h) if self.head_only else plan(merged, h)

    def stacked_adaptation(
        self,
        plan: stacked.StackedMLP,
        params: stacked.Params,
        learnables: stacked.Params,
        h_support: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        *,
        second_order: bool,
    ) -> Params:
        """:meth:`adapt_task` of every task at once: the adapted weights with a task axis
        (under ``torch.no_grad``: detached, for evaluation)."""
        start = stacked.stacked({n: params[n] for n in self.adapted_names()}, int(h_support.shape[0]))

        def support_loss(fast: stacked.Params) -> torch.Tensor:
            output = self.stacked_output(plan, params, fast, h_support)
            return stacked.task_losses(self.spec.problem, output, sy).sum()

        return stacked.inner_loop(
            support_loss, start, self.rule, learnables, self.options.inner_lr, steps, second_order=second_order
        )

    def stacked_losses(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`loss_and_accuracy` of every task at once: ``(T,)`` losses and accuracies."""
        losses = stacked.task_losses(self.spec.problem, output, target)
        if self.spec.problem == "classification":
            return losses, stacked.task_accuracies(output, target)
        return losses, torch.zeros_like(losses)

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        """Per-task ``loss``, ``loss_before`` and (classification) ``accuracy``; with stacked
        weights where :meth:`stacked_model` allows (transductive evaluation only)."""
        hooks = ("evaluate_task", "evaluation_parameters", "evaluation_tasks", "query_output")
        plan = self.stacked_model(GradientMetaLearner, hooks) if self.options.transductive else None
        if plan is None:
            return super().evaluate(batch, steps)
        data = self.episode_tensors(batch)
        steps = self.evaluation_steps(steps)
        with torch.no_grad():
            params = {k: v.detach() for k, v in self.params.items()}
            learnables = {k: v.detach() for k, v in self.inner_learnables().items()}
            h_support = self.stacked_inputs(plan, params, data.support_x)
            h_query = self.stacked_inputs(plan, params, data.query_x)
            before, _ = self.stacked_losses(self.stacked_output(plan, params, {}, h_query), data.query_y)
            fast = self.stacked_adaptation(
                plan, params, learnables, h_support, data.support_y, steps, second_order=False
            )
            loss, acc = self.stacked_losses(self.stacked_output(plan, params, fast, h_query), data.query_y)
        result = {"loss": _numpy(loss), "loss_before": _numpy(before)}
        if self.spec.problem == "classification":
            result["accuracy"] = _numpy(acc)
        return result

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

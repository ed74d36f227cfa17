"""MAML++ (Antoniou et al. 2019, "How to train your MAML"): MAML with the paper's tricks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metaplug.contract import mamlpp
from metaplug.contract.hyperparameters import MAMLPlusPlusOptions
from metaplug.contract.interfaces import EpisodeBatch, apply_rule, initial_state
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.gradient import Params
from metaplug_torch.algorithms.maml import MAML
from metaplug_torch.backend import Episodes
from metaplug_torch.inner import inner_gradients
from metaplug_torch.losses import task_loss

STEPS_KEY = "mamlpp.steps"
"""The meta-steps taken, in ``state_dict`` (the annealing schedules depend on it)."""


class MAMLPlusPlus(MAML):
    """MAML++: MAML whose tricks are switches of :class:`MAMLPlusPlusOptions` (all on by default).

    - ``multi_step_loss`` (MSL): the meta-objective weighs the query loss after every inner
      step (:func:`metaplug.contract.mamlpp.multi_step_loss_weights`).
    - ``learned_inner_lr`` (LSLR): each adapted parameter has a learned rate per inner step,
      ``lslr.<name>`` of shape ``(inner_steps,)``, initialised to ``inner_lr``; the inner rule
      steps each parameter with its own rate.
    - ``per_step_batch_norm`` (BNWB): batch norm's weights and biases are per inner step,
      ``bn.<name>`` of shape ``(inner_steps, channels)``, meta-learned and not adapted (the
      model's own are then unused). Batch norm normalises with each batch's statistics,
      so the paper's per-step running statistics (BNRS) have nothing to hold.
    - ``first_order_steps`` (DA): first-order meta-gradients for the first meta-steps.
    - ``cosine_annealing`` (CA): the outer optimizer's rate follows a cosine to ``min_outer_lr``.

    Inner steps past ``inner_steps`` (a larger ``test_inner_steps``) reuse the last step's
    rates and batch norm.
    """

    name = "mamlpp"
    Options = MAMLPlusPlusOptions
    options: MAMLPlusPlusOptions

    def setup(self) -> None:
        self.steps_taken = 0
        self._loss_weights = mamlpp.multi_step_loss_weights(self.options, 0)
        self._second_order = mamlpp.second_order_now(self.options, 0)
        if self.options.cosine_annealing:
            mamlpp.anneal_outer_rate(self.optimizer, self.options)

    # -- which parameters adapt, and the per-step ones ------------------------------------
    def norm_names(self) -> list[str]:
        """The batch-norm parameters kept per step (none without ``per_step_batch_norm``)."""
        return mamlpp.batch_norm_names(self.model.names) if self.options.per_step_batch_norm else []

    def adapted_names(self) -> list[str]:
        norms = set(self.norm_names())
        return [n for n in super().adapted_names() if n not in norms]

    def extra_parameters(self) -> dict[str, torch.Tensor]:
        extra = super().extra_parameters()
        steps = self.options.inner_steps
        if self.options.learned_inner_lr:
            for n in self.adapted_names():
                extra[f"lslr.{n}"] = torch.full((steps,), self.options.inner_lr, dtype=self.dtype, device=self.device)
        for n in self.norm_names():
            value = self.params[n].detach()
            extra[f"bn.{n}"] = value.unsqueeze(0).repeat(steps, *([1] * value.dim()))
        return extra

    def inner_learnables(self) -> Params:
        return {k[len("inner.") :]: v for k, v in self.extra.items() if k.startswith("inner.")}

    def with_norms(self, params: Params, extra: Mapping[str, torch.Tensor], step: int) -> Params:
        """``params`` with the batch norm of inner step ``step`` in place."""
        index = mamlpp.step_index(step, self.options.inner_steps)
        return {**params, **{n: extra[f"bn.{n}"][index] for n in self.norm_names()}}

    # -- the inner loop ---------------------------------------------------------------
    def rule_step(
        self, fast: Params, grads: Params, extra: Mapping[str, torch.Tensor], state: dict[str, Any], step: int
    ) -> tuple[Params, dict[str, Any]]:
        """One step of the inner rule: at ``inner_lr``, or with LSLR each parameter at its own
        learned rate of step ``step``."""
        learnables = {k[len("inner.") :]: v for k, v in extra.items() if k.startswith("inner.")}
        if not self.options.learned_inner_lr:
            return apply_rule(self.rule, fast, grads, learnables, self.options.inner_lr, state)
        index = mamlpp.step_index(step, self.options.inner_steps)
        new: dict[str, torch.Tensor] = {}
        after: dict[str, Any] = {}
        for n in fast:
            one = {n: learnables[n]} if n in learnables else {}
            stepped, part = apply_rule(
                self.rule, {n: fast[n]}, {n: grads[n]}, one, extra[f"lslr.{n}"][index], {n: state[n]} if state else {}
            )
            new[n] = stepped[n]
            after.update(part)
        return new, after

    def trajectory(
        self,
        params: Params,
        extra: Mapping[str, torch.Tensor],
        sx: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        second_order: bool,
    ) -> list[Params]:
        """The adapted parameters after each of ``steps`` inner steps on the support set."""
        fast = {n: params[n] for n in self.adapted_names()}
        if self.mode == "reference" and second_order:
            fast = {n: p.clone() for n, p in fast.items()}
        state = initial_state(self.rule, fast)
        found = []
        for step in range(steps):
            model_params = self.with_norms(params, extra, step)

            def support_loss(f: Params, model_params: Params = model_params) -> torch.Tensor:
                return task_loss(self.spec.problem, self.model({**model_params, **f}, sx), sy)

            grads = inner_gradients(support_loss, fast, second_order=second_order, functional=self.mode == "vectorized")
            fast, state = self.rule_step(fast, grads, extra, state, step)
            found.append(fast)
        return found

    def adapt_task(
        self,
        params: Params,
        learnables: Params,
        h_support: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        second_order: bool,
    ) -> Params:
        """The adapted parameters after ``steps`` steps, with the last step's batch norm
        (``learnables`` are all of MAML++'s extra tensors, :meth:`evaluation_parameters`)."""
        found = self.trajectory(params, learnables, h_support, sy, steps, second_order)
        fast = found[-1] if found else {n: params[n] for n in self.adapted_names()}
        norms = self.with_norms({}, learnables, max(steps - 1, 0))
        return {**fast, **norms}

    # -- meta-training ------------------------------------------------------------------
    def _train_objective(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params, extra = shared
        steps = self.options.inner_steps
        found = self.trajectory(params, extra, sx, sy, steps, self._second_order)
        objective: Any = 0.0
        for step, weight in enumerate(self._loss_weights):
            if weight == 0.0 and step != steps - 1:
                continue
            output = self.model({**self.with_norms(params, extra, step), **found[step]}, qx)
            loss, acc = self.loss_and_accuracy(output, qy)
            objective = objective + weight * loss
        return objective, acc, loss

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        _, acc, loss = self.map_tasks(
            self._train_objective, (self.params, dict(self.extra)), tasks, backward_scale=1.0 / len(data.support_x)
        )
        return loss, acc

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update; the metrics are the query loss (and accuracy) after the last inner step."""
        self._loss_weights = mamlpp.multi_step_loss_weights(self.options, self.steps_taken)
        self._second_order = mamlpp.second_order_now(self.options, self.steps_taken)
        metrics = super().meta_train_step(batch)
        self.steps_taken += 1
        return metrics

    # -- evaluation ---------------------------------------------------------------------
    def evaluation_parameters(self) -> Any:
        """``(detached model parameters, every extra tensor detached)``."""
        return self.detached_parameters(), {k: v.detach() for k, v in self.extra.items()}

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params, extra = shared
        start = self.with_norms({n: params[n] for n in self.adapted_names()}, extra, 0)
        before, _ = self.loss_and_accuracy(self.query_output(params, start, sx, qx), qy)
        fast = self.adapt_task(params, extra, sx, sy, steps, second_order=False)
        loss, acc = self.loss_and_accuracy(self.query_output(params, fast, sx, qx), qy)
        return loss.detach(), before.detach(), acc.detach()

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The base class's state and ``mamlpp.steps``, the meta-steps taken."""
        return {**super().state_dict(), STEPS_KEY: np.asarray(self.steps_taken, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if STEPS_KEY not in state:
            raise ConfigError(f"state has no entry {STEPS_KEY!r} (the meta-steps MAML++ has taken)")
        super().load_state_dict({k: v for k, v in state.items() if k != STEPS_KEY})
        self.steps_taken = int(np.asarray(state[STEPS_KEY]))

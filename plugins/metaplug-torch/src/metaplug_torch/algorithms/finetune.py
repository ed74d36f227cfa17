"""The transfer-learning baseline: joint pre-training, then fine-tuning on each task."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaplug.contract.hyperparameters import FineTuneOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.contract.regularization import check_new_head, regularised
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner
from metaplug_torch.backend import Episodes
from metaplug_torch.functional import Params
from metaplug_torch.inner import inner_loop
from metaplug_torch.losses import task_loss

PRETRAIN = "pretrain.head."


class FineTune(MetaLearner):
    """Pre-train on all meta-training tasks, then fine-tune on each task's support set.

    ``meta_train_step`` is ordinary training. Classification: ``features`` and a head
    over all ``spec.num_classes`` training classes (``pretrain.head.*``), cross-entropy
    on the support and query examples of each episode (one batch per episode).
    Regression: the model fits every task's points with MSE. Adaptation trains, with
    ``test_inner_steps`` steps of gradient descent at ``inner_lr`` on the support set,
    a new zero-initialised head for the episode's ways (classification) or the model's
    own head (regression), together with ``features`` when ``finetune="all"``, on the
    support loss plus ``regularization_strength`` times the ``regularization``
    (:mod:`metaplug.contract.regularization`; ``l2-sp`` anchors the weights at the trained
    ones they start from, the new head at zero).
    """

    name = "finetune"
    Options = FineTuneOptions
    options: FineTuneOptions

    @property
    def classification(self) -> bool:
        return self.spec.problem == "classification"

    def extra_parameters(self) -> dict[str, torch.Tensor]:
        """Classification: the pre-training head over all training classes (``pretrain.head.*``)."""
        self.model.require_parts(self.name)
        if not self.classification:
            return {}
        classes = self.spec.num_classes
        if not classes:
            raise ConfigError("finetune needs spec.num_classes (the training split's class count)")
        with torch.no_grad():
            probe = torch.zeros((2, *self.spec.input_shape), dtype=self.dtype, device=self.device)
            self.width = int(self.model.embed(self.params, probe).shape[-1])
        head = torch.nn.Linear(self.width, classes, dtype=self.dtype, device=self.device)
        return {PRETRAIN + "weight": head.weight, PRETRAIN + "bias": head.bias}

    def setup(self) -> None:
        """Classification fine-tunes a new head: it cannot be frozen in adaptation."""
        check_new_head(self.classification, self.freezing.adaptation)

    # -- pre-training -------------------------------------------------------------------
    def _pretrain_task(
        self, shared: tuple[Params, Params], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params, head = shared
        if self.classification:
            z = self.model.embed(params, x)
            return self.loss_and_accuracy(F.linear(z, head[PRETRAIN + "weight"], head[PRETRAIN + "bias"]), y)
        return self.loss_and_accuracy(self.model(params, x), y)

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        if self.classification:
            if batch.classes is None:
                raise ConfigError("finetune pre-training needs batch.classes (split-wide class ids)")
            if int(np.max(batch.classes)) >= (self.spec.num_classes or 0) or int(np.min(batch.classes)) < 0:
                raise ConfigError(
                    f"class id {int(np.max(batch.classes))} is outside the {self.spec.num_classes} training classes"
                )
            classes = self.backend.tensor(batch.classes)
            support_y = torch.gather(classes, 1, data.support_y)
            query_y = torch.gather(classes, 1, data.query_y)
        else:
            support_y, query_y = data.support_y, data.query_y
        x = torch.cat([data.support_x, data.query_x], 1)
        y = torch.cat([support_y, query_y], 1)
        return self.map_tasks(self._pretrain_task, (self.params, self.extra), (x, y), backward_scale=1.0 / len(x))

    # -- fine-tuning --------------------------------------------------------------------
    def _start(self, params: Params) -> Params:
        """The parameters that fine-tuning changes, at their initial values."""
        features = {n: p for n, p in params.items() if n.startswith("features.")}
        start = {} if self.options.finetune == "head" else features
        if self.classification:
            zeros = params[self.model.names[0]].new_zeros
            ways = self.spec.output_size
            start.update({"head.weight": zeros((ways, self.width)), "head.bias": zeros((ways,))})
        else:
            start.update({n: p for n, p in params.items() if n.startswith("head.")})
        if self.mode != "vectorized":  # torch.autograd.grad needs leaves that require gradients
            start = {n: p.detach().clone().requires_grad_() for n, p in start.items()}
        return start

    def _inputs(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(params, x) if self.options.finetune == "head" else x

    def _output(self, params: Params, fast: Params, h: torch.Tensor) -> torch.Tensor:
        z = h if self.options.finetune == "head" else self.model.embed({**params, **fast}, h)
        if self.classification:
            return F.linear(z, fast["head.weight"], fast["head.bias"])
        return self.model.head(fast, z)

    def _finetune(
        self, params: Params, sx: torch.Tensor, sy: torch.Tensor, steps: int
    ) -> tuple[Params, dict[str, torch.Tensor]]:
        h_support = self._inputs(params, sx)
        start = self._start(params)
        rule = regularised(
            self.rule,
            self.options.regularization,
            self.options.regularization_strength,
            {n: params[n].detach() for n in start if not (self.classification and n.startswith("head."))},
        )

        def support_loss(fast: Params) -> torch.Tensor:
            return task_loss(self.spec.problem, self._output(params, fast, h_support), sy)

        fast = inner_loop(
            support_loss,
            start,
            rule,
            {},
            self.options.inner_lr,
            steps,
            second_order=False,
            functional=self.mode == "vectorized",
        )
        return start, fast

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start, fast = self._finetune(shared, sx, sy, steps)
        h_query = self._inputs(shared, qx)
        before, _ = self.loss_and_accuracy(self._output(shared, start, h_query), qy)
        loss, acc = self.loss_and_accuracy(self._output(shared, fast, h_query), qy)
        return loss.detach(), before.detach(), acc.detach()

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Fine-tune on one support set for ``steps`` (default ``options.evaluation_steps``,
        that is ``test_inner_steps``) steps."""
        steps = self.evaluation_steps(steps)
        params = self.detached_parameters()
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y, self.dtype)
        _, fast = self._finetune(params, sx, sy, steps)
        fast = {n: p.detach() for n, p in fast.items()}
        frozen = {n: p.detach() for n, p in params.items()}
        forward = lambda x: self._output(frozen, fast, self._inputs(frozen, x))  # noqa: E731
        return AdaptedModel(forward, self.backend, self.dtype, {**frozen, **fast})

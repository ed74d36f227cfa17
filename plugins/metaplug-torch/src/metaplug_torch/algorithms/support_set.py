"""The base of algorithms that adapt by a function of the support set, with no inner loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from metaplug.contract.interfaces import EpisodeBatch
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner
from metaplug_torch.backend import Episodes


class SupportSetLearner(MetaLearner):
    """An algorithm whose task model is a function of the support set (prototypes, a
    closed-form head, class features): ProtoNets, R2-D2, Relation Networks.

    Subclasses give :meth:`logits`; the meta-gradient is that of the query loss
    (:meth:`task_loss`, cross-entropy by default) through it, an adapted model predicts
    with it, and evaluation reports ``loss_before`` as NaN (there is no inner loop).
    The meta-parameters every task sees (``shared``) are ``self.params``, paired with
    ``self.extra`` when the algorithm declares extra parameters.
    """

    def logits(self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(N, ways)`` outputs for ``x`` given a task's support set ``(sx, sy)``."""
        raise NotImplementedError

    def task_loss(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A task's query loss and accuracy (default: :meth:`loss_and_accuracy` of :meth:`logits`)."""
        return self.loss_and_accuracy(self.logits(shared, sx, sy, qx), qy)

    def predictor(self, shared: Any, sx: torch.Tensor, sy: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """What an adapted model computes for ``x`` (default: :meth:`logits` with the support
        set; override to compute what depends only on the support set once)."""
        return lambda x: self.logits(shared, sx, sy, x)

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        shared = (self.params, dict(self.extra)) if self.extra else self.params
        return self.map_tasks(self.task_loss, shared, tasks, backward_scale=1.0 / len(data.support_x))

    def evaluation_parameters(self) -> Any:
        """The detached parameters, paired with the detached ``self.extra`` when there are any."""
        if not self.extra:
            return self.detached_parameters()
        return self.detached_parameters(), {k: v.detach() for k, v in self.extra.items()}

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, acc = self.task_loss(shared, sx, sy, qx, qy)
        return loss, torch.full_like(loss, math.nan), acc

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """The model of the support set; ``steps`` is ignored (no inner loop)."""
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y)
        with torch.no_grad():
            predict = self.predictor(self.evaluation_parameters(), sx, sy)
        return AdaptedModel(predict, self.backend, self.dtype)

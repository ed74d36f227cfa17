"""Prototypical Networks (Snell et al. 2017)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaplug.contract.hyperparameters import ProtoNetOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner
from metaplug_torch.backend import Episodes
from metaplug_torch.functional import Params, one_hot


class ProtoNet(MetaLearner):
    """Prototypical Networks: each class's prototype is the mean embedding (``features``)
    of its support examples; logits are minus the squared Euclidean distance (or the
    cosine similarity) of a query embedding to each prototype. Classification only.

    Support and query examples of a task are embedded in one batch, so batch norm
    sees the whole episode (as in Snell et al.'s code); ``predict(x)`` likewise embeds
    ``x`` together with the support set. There is no inner loop, so ``loss_before``
    is NaN.
    """

    name = "protonet"
    problems = ("classification",)
    Options = ProtoNetOptions
    options: ProtoNetOptions

    def check_model(self) -> None:
        """ProtoNets use the embedding, not the output: one vector per example."""
        shape = self.probe_model(lambda x: self.model.embed(self.params, x))
        if len(shape) != 2:
            raise ConfigError(f"protonet embeds each example as a vector; the model's features give shape {shape}")

    def _logits(self, params: Params, sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shots = sx.shape[0]
        embedded = self.model.embed(params, torch.cat([sx, x]))
        support, query = embedded[:shots], embedded[shots:]
        member = one_hot(sy, self.spec.output_size, support.dtype)
        counts = member.sum(0)
        prototypes = (member.T @ support) / counts.clamp(min=1).unsqueeze(-1)
        if self.options.distance == "cosine":
            logits = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T
        else:
            logits = -(query.unsqueeze(1) - prototypes.unsqueeze(0)).square().sum(-1)
        # Episodes with fewer ways than the spec (e.g. 60-way training, 5-way testing):
        # classes absent from the support set have no prototype and never win.
        return torch.where(counts > 0, logits, torch.full_like(logits, -math.inf))

    def _train_task(
        self, params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss_and_accuracy(self._logits(params, sx, sy, qx), qy)

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        return self.map_tasks(self._train_task, self.params, tasks, backward_scale=1.0 / len(data.support_x))

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, acc = self._train_task(shared, sx, sy, qx, qy)
        return loss, torch.full_like(loss, math.nan), acc

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Prototypes of the support set; ``steps`` is ignored (no inner loop)."""
        params = self.detached_parameters()
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y)
        return AdaptedModel(lambda x: self._logits(params, sx, sy, x), self.backend, self.dtype)

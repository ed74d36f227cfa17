"""Prototypical Networks (Snell et al. 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metaplug.contract.hyperparameters import ProtoNetOptions
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.support_set import SupportSetLearner
from metaplug_torch.functional import Params, one_hot


class ProtoNet(SupportSetLearner):
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

    def logits(self, shared: Params, sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shots = sx.shape[0]
        embedded = self.model.embed(shared, torch.cat([sx, x]))
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

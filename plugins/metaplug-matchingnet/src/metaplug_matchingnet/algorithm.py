"""Matching Networks (Vinyals et al. 2016) for metaplug's torch backend.

Without full-context embeddings: support and query examples share one embedding,
the model's ``features`` (``conv4`` or ``mlp``). A query's class distribution is the
attention-weighted sum of the support labels, the attention being a softmax over
the cosine similarities between the query's embedding and each support embedding:

    p(y | x, S) = sum_i softmax_i(scale * cos(f(x), f(x_i))) * onehot(y_i)

Built on metaplug-torch's helpers only: ``TorchAlgorithm`` supplies construction,
the outer step, batching over tasks and the state; ``FunctionalModel.embed`` runs
``features`` on explicit weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaplug.errors import ConfigError
from metaplug.contract.interfaces import EpisodeBatch, TaskSpec
from metaplug_torch.algorithms.base import TorchAdapted, TorchAlgorithm, check_rate
from metaplug_torch.backend import TorchBackend, TorchEpisodes
from metaplug_torch.functional import Params, one_hot


class MatchingNetworks(TorchAlgorithm):
    """Matching Networks without full-context embeddings: cosine attention over the
    support embeddings (``features``) gives each query a distribution over the ways.
    Classification only; the model's ``head`` is built but unused.

    :param scale: multiplies the cosine similarities before the softmax. Vinyals et
        al. use 1; a larger value sharpens the attention and trains much faster on
        small budgets (10 is the common choice of later re-implementations).
    :param batching: how tasks are batched: ``auto``, ``vmap``, ``loop`` or ``reference``.

    Support and query examples of a task are embedded in one batch (batch norm sees
    the whole episode); ``predict(x)`` likewise embeds ``x`` with the support set and
    returns log-probabilities. There is no inner loop, so ``loss_before`` is NaN.
    """

    name = "matchingnet"
    problems = ("classification",)

    def __init__(self, backend: TorchBackend | None = None, model: torch.nn.Module | None = None,
                 spec: TaskSpec | None = None, optimizer: Any = None, *, scale: float = 10.0,
                 batching: str = "auto") -> None:
        self.scale = check_rate("scale", scale)
        super().__init__(backend, model, spec, optimizer, batching)
        self.model.require_parts(self.name)
        self.ways = self.spec.output_size

    def log_probabilities(self, params: Params, sx: torch.Tensor, sy: torch.Tensor,
                          x: torch.Tensor) -> torch.Tensor:
        """``log p(y | x, S)``, shape ``(len(x), ways)``, for one task's support set ``(sx, sy)``."""
        shots = sx.shape[0]
        embedded = self.model.embed(params, torch.cat([sx, x]))
        support = F.normalize(embedded[:shots], dim=-1)
        query = F.normalize(embedded[shots:], dim=-1)
        attention = torch.softmax(self.scale * query @ support.T, dim=-1)
        probabilities = attention @ one_hot(sy, self.ways, attention.dtype)
        return torch.log(probabilities.clamp_min(1e-12))

    def _task(self, params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
              qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cross-entropy of log-probabilities is their negative log-likelihood (they sum to 1)
        return self.loss_and_accuracy(self.log_probabilities(params, sx, sy, qx), qy)

    def meta_gradients(self, data: TorchEpisodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        return self.map_tasks(self._task, self.params, tasks, backward_scale=1.0 / len(data.support_x))

    def evaluate_task(self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                      qy: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, accuracy = self._task(shared, sx, sy, qx, qy)
        return loss, torch.full_like(loss, math.nan), accuracy

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> TorchAdapted:
        """Remember the support set; ``predict(x)`` gives log-probabilities. ``steps`` is ignored."""
        support_y = np.asarray(support_y)
        if support_y.ndim != 1 or not np.issubdtype(support_y.dtype, np.integer):
            raise ConfigError(f"support_y must be integer labels of shape (N,), got {support_y.dtype} "
                              f"{support_y.shape}")
        params = self.detached_parameters()
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y)
        return TorchAdapted(lambda x: self.log_probabilities(params, sx, sy, x), self.backend, self.dtype)

"""Matching Networks (Vinyals et al. 2016) for metaplug's torch backend.

Without full-context embeddings: support and query examples share one embedding,
the model's ``features`` (``conv4`` or ``mlp``). A query's class distribution is the
attention-weighted sum of the support labels, the attention being a softmax over
the cosine similarities between the query's embedding and each support embedding:

    p(y | x, S) = sum_i softmax_i(scale * cos(f(x), f(x_i))) * onehot(y_i)

Built on metaplug-torch's helpers only: ``MetaLearner`` supplies construction (the
options validated into ``self.options``), the outer step, batching over tasks and the
state; ``FunctionalModel.embed`` runs ``features`` on explicit weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from metaplug import option
from metaplug.contract.hyperparameters import BatchingOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner
from metaplug_torch.backend import Episodes
from metaplug_torch.functional import Params, one_hot


@dataclass(frozen=True)
class MatchingNetOptions(BatchingOptions):
    """``batching`` (metaplug-torch's modes) and the attention's ``scale``."""

    scale: float = option(
        10.0, minimum=0, exclusive=True, help="multiplies the cosine similarities before the softmax (the paper: 1)"
    )


class MatchingNetworks(MetaLearner):
    """Matching Networks without full-context embeddings: cosine attention over the
    support embeddings (``features``) gives each query a distribution over the ways.
    Classification only; the model's ``head`` is built but unused.

    Options (:class:`MatchingNetOptions`): ``scale`` multiplies the cosine similarities
    before the softmax. Vinyals et al. use 1; a larger value sharpens the attention and
    trains much faster on small budgets (10 is the common choice of later
    re-implementations). ``batching``: how tasks are batched, ``auto``, ``vectorized``,
    ``loop`` or ``reference``.

    Support and query examples of a task are embedded in one batch (batch norm sees
    the whole episode); ``predict(x)`` likewise embeds ``x`` with the support set and
    returns log-probabilities. There is no inner loop, so ``loss_before`` is NaN.
    """

    name = "matchingnet"
    problems = ("classification",)
    Options = MatchingNetOptions
    options: MatchingNetOptions

    def setup(self) -> None:
        """The embedding is the model's ``features``: it needs ``features`` and ``head`` parts."""
        self.model.require_parts(self.name)

    def log_probabilities(self, params: Params, sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(y | x, S)``, shape ``(len(x), ways)``, for one task's support set ``(sx, sy)``."""
        shots = sx.shape[0]
        embedded = self.model.embed(params, torch.cat([sx, x]))
        support = F.normalize(embedded[:shots], dim=-1)
        query = F.normalize(embedded[shots:], dim=-1)
        attention = torch.softmax(self.options.scale * query @ support.T, dim=-1)
        probabilities = attention @ one_hot(sy, self.spec.output_size, attention.dtype)
        return torch.log(probabilities.clamp_min(1e-12))

    def _task(
        self, params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # cross-entropy of log-probabilities is their negative log-likelihood (they sum to 1)
        return self.loss_and_accuracy(self.log_probabilities(params, sx, sy, qx), qy)

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        return self.map_tasks(self._task, self.params, tasks, backward_scale=1.0 / len(data.support_x))

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, accuracy = self._task(shared, sx, sy, qx, qy)
        return loss, torch.full_like(loss, math.nan), accuracy

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Remember the support set; ``predict(x)`` gives log-probabilities. ``steps`` is ignored."""
        support_y = np.asarray(support_y)
        if support_y.ndim != 1 or not np.issubdtype(support_y.dtype, np.integer):
            raise ConfigError(
                f"support_y must be integer labels of shape (N,), got {support_y.dtype} {support_y.shape}"
            )
        params = self.detached_parameters()
        sx = self.backend.tensor(support_x, self.dtype)
        sy = self.backend.tensor(support_y)
        return AdaptedModel(lambda x: self.log_probabilities(params, sx, sy, x), self.backend, self.dtype)

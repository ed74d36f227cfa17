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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from metaplug import option
from metaplug.contract.hyperparameters import BatchingOptions
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.base import AdaptedModel
from metaplug_torch.algorithms.support_set import SupportSetLearner
from metaplug_torch.functional import Params, one_hot


@dataclass(frozen=True)
class MatchingNetOptions(BatchingOptions):
    """``batching`` (metaplug-torch's modes) and the attention's ``scale``."""

    scale: float = option(
        10.0, minimum=0, exclusive=True, help="multiplies the cosine similarities before the softmax (the paper: 1)"
    )


class MatchingNetworks(SupportSetLearner):
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

    def logits(self, shared: Params, sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The log-probabilities: their cross-entropy is their negative log-likelihood (they sum to 1)."""
        return self.log_probabilities(shared, sx, sy, x)

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Remember the support set; ``predict(x)`` gives log-probabilities. ``steps`` is ignored."""
        support_y = np.asarray(support_y)
        if support_y.ndim != 1 or not np.issubdtype(support_y.dtype, np.integer):
            raise ConfigError(
                f"support_y must be integer labels of shape (N,), got {support_y.dtype} {support_y.shape}"
            )
        return super().adapt(support_x, support_y, steps)

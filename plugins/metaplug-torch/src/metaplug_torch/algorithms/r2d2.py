"""R2-D2 (Bertinetto et al. 2019): a ridge-regression head solved in closed form per task."""

from __future__ import annotations

import math

import torch

from metaplug.contract.hyperparameters import R2D2Options
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.support_set import SupportSetLearner
from metaplug_torch.functional import Params, one_hot

PREFIX = "r2d2."


def ridge_weights(support: torch.Tensor, targets: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """``(F + 1, ways)`` ridge-regression weights (the last row the bias) of ``targets``
    ``(S, ways)`` on ``support`` ``(S, F)``: ``X^T (X X^T + lambda I)^-1 Y`` (Woodbury's
    identity, an ``S x S`` system) when ``S <= F + 1``, else ``(X^T X + lambda I)^-1 X^T Y``;
    ``X = [support, 1] / sqrt(S)`` and ``Y = targets / sqrt(S)`` as in Bertinetto et al.'s code."""
    shots = support.shape[0]
    root = math.sqrt(shots)
    x = torch.cat([support, torch.ones_like(support[:, :1])], dim=1) / root
    y = targets / root
    if shots <= x.shape[1]:
        eye = torch.eye(shots, dtype=x.dtype, device=x.device)
        return x.T @ torch.linalg.solve(x @ x.T + penalty * eye, y)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.linalg.solve(x.T @ x + penalty * eye, x.T @ y)


class R2D2(SupportSetLearner):
    """R2-D2: each task's classifier is ridge regression of the support set's one-hot labels
    on its embeddings (``features``), solved in closed form and differentiated through;
    logits are ``scale * (z @ W + b) + offset`` with a learned scale and offset (and a
    learned penalty lambda unless ``learn_lambda`` is false). Classification only.

    Support and query examples of a task are embedded in one batch (as the authors' code
    does); ``predict(x)`` embeds ``x`` together with the support set. Meta-parameters
    besides the model: ``r2d2.scale``, ``r2d2.offset`` and ``r2d2.lambda``. There is no
    inner loop, so ``loss_before`` is NaN.
    """

    name = "r2d2"
    problems = ("classification",)
    Options = R2D2Options
    options: R2D2Options

    def check_model(self) -> None:
        """R2-D2 regresses on the embedding: one vector per example."""
        shape = self.probe_model(lambda x: self.model.embed(self.params, x))
        if len(shape) != 2:
            raise ConfigError(f"r2d2 embeds each example as a vector; the model's features give shape {shape}")

    def extra_parameters(self) -> dict[str, torch.Tensor]:
        def scalar(value: float) -> torch.Tensor:
            return torch.full((1,), value, dtype=self.dtype, device=self.device)

        found = {PREFIX + "scale": scalar(self.options.init_scale), PREFIX + "offset": scalar(self.options.init_offset)}
        if self.options.learn_lambda:
            found[PREFIX + "lambda"] = scalar(self.options.init_lambda)
        return found

    def _penalty(self, extra: Params) -> torch.Tensor:
        if self.options.learn_lambda:
            return extra[PREFIX + "lambda"]
        return torch.tensor(self.options.init_lambda, dtype=self.dtype, device=self.device)

    def logits(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        params, extra = shared
        shots = sx.shape[0]
        embedded = self.model.embed(params, torch.cat([sx, x]))
        member = one_hot(sy, self.spec.output_size, embedded.dtype)
        weights = ridge_weights(embedded[:shots], member, self._penalty(extra))
        logits = extra[PREFIX + "scale"] * (embedded[shots:] @ weights[:-1] + weights[-1]) + extra[PREFIX + "offset"]
        # Episodes with fewer ways than the spec: classes absent from the support set never win.
        return torch.where(member.sum(0) > 0, logits, torch.full_like(logits, -math.inf))

"""R2-D2 (Bertinetto et al. 2019): a ridge-regression head solved in closed form per task."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from metaplug.contract.hyperparameters import R2D2Options
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.support_set import Extra, SupportSetLearner

PREFIX = "r2d2."


def ridge_weights(support: tf.Tensor, targets: tf.Tensor, penalty: tf.Tensor) -> tf.Tensor:
    """``(T, F + 1, ways)`` ridge-regression weights (the last row the bias) of ``targets``
    ``(T, S, ways)`` on ``support`` ``(T, S, F)``: ``X^T (X X^T + lambda I)^-1 Y`` (Woodbury's
    identity, an ``S x S`` system) when ``S <= F + 1``, else ``(X^T X + lambda I)^-1 X^T Y``;
    ``X = [support, 1] / sqrt(S)`` and ``Y = targets / sqrt(S)`` as in Bertinetto et al.'s code."""
    shots = support.shape[1]
    root = math.sqrt(shots)
    x = tf.concat([support, tf.ones_like(support[:, :, :1])], axis=2) / root
    y = targets / root
    if shots <= x.shape[2]:
        eye = tf.eye(shots, dtype=x.dtype)
        return tf.matmul(x, tf.linalg.solve(tf.matmul(x, x, transpose_b=True) + penalty * eye, y), transpose_a=True)
    eye = tf.eye(x.shape[2], dtype=x.dtype)
    return tf.linalg.solve(tf.matmul(x, x, transpose_a=True) + penalty * eye, tf.matmul(x, y, transpose_a=True))


class R2D2(SupportSetLearner):
    """R2-D2: each task's classifier is ridge regression of the support set's one-hot labels
    on its ``features`` embeddings, solved in closed form and differentiated through; logits
    are ``scale * (z @ W + b) + offset`` with a learned scale and offset (and a learned
    penalty lambda unless ``learn_lambda`` is false). Classification only; the head is built
    but unused.

    Support and query examples of a task are embedded in one batch (as the authors' code);
    an adapted model keeps the support set and embeds the examples to predict together
    with it. Meta-parameters besides the model: ``r2d2.scale``, ``r2d2.offset`` and
    ``r2d2.lambda``. ``evaluate`` gives NaN for ``loss_before``.
    """

    name = "r2d2"
    problems = ("classification",)
    Options = R2D2Options
    options: R2D2Options

    def check_model(self) -> None:
        """R2-D2 regresses on the embedding: one vector per example."""
        shape = self.probe_model(lambda x: self.model.embed(self.feature_weights, x))
        if len(shape) != 2:
            raise ConfigError(f"r2d2 embeds each example as a vector; the model's features give shape {shape}")

    def extra_parameters(self) -> dict[str, np.ndarray]:
        found = {
            PREFIX + "scale": np.full((1,), self.options.init_scale),
            PREFIX + "offset": np.full((1,), self.options.init_offset),
        }
        if self.options.learn_lambda:
            found[PREFIX + "lambda"] = np.full((1,), self.options.init_lambda)
        return found

    def logits(
        self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor
    ) -> tf.Tensor:
        shots, ways = sx.shape[1], self.spec.output_size
        embedded = self.model.embed(features, tf.concat([sx, tf.cast(qx, sx.dtype)], axis=1))
        member = tf.one_hot(sy, ways, dtype=embedded.dtype)
        penalty = extra.get(PREFIX + "lambda", tf.constant(self.options.init_lambda, embedded.dtype))
        weights = ridge_weights(embedded[:, :shots], member, penalty)
        raw = tf.matmul(embedded[:, shots:], weights[:, :-1]) + weights[:, -1:]
        logits = extra[PREFIX + "scale"] * raw + extra[PREFIX + "offset"]
        # Episodes with fewer ways than the spec: classes absent from the support set never win.
        present = tf.reduce_sum(member, axis=1) > 0
        return tf.where(present[:, None, :], logits, tf.constant(-float("inf"), logits.dtype))

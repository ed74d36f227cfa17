"""Prototypical Networks (Snell et al. 2017): classify by distance to class prototypes."""

from __future__ import annotations

from collections.abc import Sequence

from metaplug.contract.hyperparameters import ProtoNetOptions
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.support_set import Extra, SupportSetLearner


def prototypes(embeddings: tf.Tensor, labels: tf.Tensor, ways: int) -> tf.Tensor:
    """``(T, ways, F)`` mean embedding of each class's support examples ``(T, S, F)``."""
    one_hot = tf.one_hot(labels, ways, dtype=embeddings.dtype)
    sums = tf.einsum("tsw,tsf->twf", one_hot, embeddings)
    counts = tf.reduce_sum(one_hot, axis=1)[:, :, None]
    return sums / tf.maximum(counts, 1)


def scores(queries: tf.Tensor, protos: tf.Tensor, distance: str) -> tf.Tensor:
    """``(T, Q, ways)`` logits: minus the squared Euclidean distance, or the cosine similarity."""
    if distance == "cosine":
        queries = tf.math.l2_normalize(queries, axis=-1, epsilon=1e-16)
        protos = tf.math.l2_normalize(protos, axis=-1, epsilon=1e-16)
        return tf.einsum("tqf,twf->tqw", queries, protos)
    return -tf.reduce_sum(tf.square(queries[:, :, None, :] - protos[:, None, :, :]), axis=-1)


class ProtoNet(SupportSetLearner):
    """Prototypical Networks: prototypes are mean ``features.*`` embeddings of each class's
    support examples; no inner loop, the head is built but unused.

    A task's support and query examples are embedded in one batch, so batch norm sees
    the whole episode (as in Snell et al.'s code and the torch plugin); an adapted
    model keeps the support set and embeds the examples to predict together with it.
    ``evaluate`` gives NaN for ``loss_before``. ``distance``: ``"euclidean"`` (squared) or
    ``"cosine"``.
    """

    name = "protonet"
    problems = ("classification",)
    Options = ProtoNetOptions
    options: ProtoNetOptions

    def check_model(self) -> None:
        """ProtoNets use the embedding, not the output: one vector per example."""
        shape = self.probe_model(lambda x: self.model.embed(self.feature_weights, x))
        if len(shape) != 2:
            raise ConfigError(f"protonet embeds each example as a vector; the model's features give shape {shape}")

    def logits(
        self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor
    ) -> tf.Tensor:
        shots, ways = sx.shape[1], self.spec.output_size
        embedded = self.model.embed(features, tf.concat([sx, tf.cast(qx, sx.dtype)], axis=1))
        protos = prototypes(embedded[:, :shots], sy, ways)
        logits = scores(embedded[:, shots:], protos, self.options.distance)
        # Episodes with fewer ways than the spec (e.g. 60-way training, 5-way testing):
        # classes absent from the support set have no prototype and never win.
        present = tf.reduce_any(tf.equal(sy[:, :, None], tf.range(ways, dtype=sy.dtype)), axis=1)
        return tf.where(present[:, None, :], logits, tf.constant(-float("inf"), logits.dtype))

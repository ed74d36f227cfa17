"""Relation Networks (Sung et al. 2018): a learned relation module scores (class, query) pairs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from metaplug.contract.hyperparameters import RelationNetOptions
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import Weights
from metaplug_tensorflow.algorithms.support_set import Extra, SupportSetLearner
from metaplug_tensorflow.layout import to_native
from metaplug_tensorflow.models import PADDING_1, Conv4, batch_norm, dense

PREFIX = "relation."
CONV = ("conv1", "conv2")
DENSE = ("dense1", "dense2")


def pooled(height: int, width: int) -> tuple[int, int]:
    """A map's size after the relation module's 2x2 max-pooling: halved, unless a side is
    a single pixel (then the map is not pooled)."""
    return (height // 2, width // 2) if min(height, width) >= 2 else (height, width)


def feature_map(model: object, input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` of a standard conv4's features (flattened channel-first),
    or ``None`` for any other model."""
    if not isinstance(model, Conv4) or len(input_shape) != 3:
        return None
    height, width = input_shape[1:]
    for _ in range(4):
        height, width = (height // 2, width // 2) if model.stride == 1 else ((height + 1) // 2, (width + 1) // 2)
    return int(model.spec.options.get("filters", 64)), height, width


class RelationNet(SupportSetLearner):
    """Relation Networks: the ``features`` embedding of each class's support examples, summed
    per class, is paired with each query embedding; a learned relation module scores each
    pair in [0, 1] and is trained with the mean squared error against the one-hot labels, as
    in the paper. Classification only; the head is built but unused.

    ``relation="conv"`` (the paper's module; ``"auto"`` picks it for conv4): the pair's
    feature maps, concatenated along the channels, go through two blocks of 3x3 convolution
    (padding 1, ``relation_filters`` channels), batch norm, ReLU and 2x2 max-pooling (a
    1x1 map is not pooled), then a ReLU layer of ``relation_hidden`` units and a sigmoid
    unit. ``relation="mlp"``: two ReLU layers of ``relation_filters`` units instead of the
    conv blocks. As in the authors' code, support and query examples are embedded in
    separate batches and the relation module normalises over the pairs of a task. Saved as
    ``relation.*``; ``evaluate`` gives NaN for ``loss_before``.
    """

    name = "relationnet"
    problems = ("classification",)
    Options = RelationNetOptions
    options: RelationNetOptions
    embedding_size: int
    feature_map: tuple[int, int, int] | None
    """``(channels, height, width)`` of the features (conv4), else ``None``."""
    kind: str
    """The relation module: ``"conv"`` or ``"mlp"``."""

    def check_model(self) -> None:
        """The relation module needs a vector per example (a flattened map for ``conv``)."""
        shape = self.probe_model(lambda x: self.model.embed(self.feature_weights, x))
        if len(shape) != 2:
            raise ConfigError(f"relationnet embeds each example as a vector; the model's features give shape {shape}")
        self.embedding_size = int(shape[1])
        self.feature_map = feature_map(self.model, tuple(self.spec.input_shape))
        if self.options.relation == "conv" and self.feature_map is None:
            raise ConfigError("relation 'conv' needs the conv4 model (feature maps); use relation 'mlp' or 'auto'")
        if self.options.relation == "auto":
            self.kind = "mlp" if self.feature_map is None else "conv"
        else:
            self.kind = self.options.relation

    def extra_parameters(self) -> dict[str, np.ndarray]:
        """Initialised as Sung et al.'s ``weights_init`` (see the torch plugin), drawn from the
        backend's generator in the shared layout and stored in TensorFlow's."""
        rng = self.backend.rng
        filters, hidden = self.options.relation_filters, self.options.relation_hidden
        found: dict[str, np.ndarray] = {}
        if self.kind == "conv":
            assert self.feature_map is not None
            channels, height, width = self.feature_map
            for name, fan in zip(CONV, (2 * channels, filters), strict=True):
                kernel = rng.normal(0.0, math.sqrt(2.0 / (9 * filters)), (filters, fan, 3, 3))
                found[f"{PREFIX}{name}.weight"] = to_native(kernel)
                found[f"{PREFIX}{name}.bias"] = np.zeros(filters)
                found[f"{PREFIX}{name}.norm.weight"] = np.ones(filters)
                found[f"{PREFIX}{name}.norm.bias"] = np.zeros(filters)
            height, width = pooled(*pooled(height, width))
            flat = filters * height * width
        else:
            for name, fan in zip(DENSE, (2 * self.embedding_size, filters), strict=True):
                found[f"{PREFIX}{name}.weight"] = to_native(rng.normal(0.0, math.sqrt(2.0 / filters), (filters, fan)))
                found[f"{PREFIX}{name}.bias"] = np.zeros(filters)
            flat = filters
        found[PREFIX + "fc1.weight"] = to_native(rng.normal(0.0, 0.01, (hidden, flat)))
        found[PREFIX + "fc1.bias"] = np.ones(hidden)
        found[PREFIX + "fc2.weight"] = to_native(rng.normal(0.0, 0.01, (1, hidden)))
        found[PREFIX + "fc2.bias"] = np.ones(1)
        return found

    def relation_scores(self, relation: Mapping[str, tf.Tensor], pairs: tf.Tensor) -> tf.Tensor:
        """Scores ``(T, P)`` in [0, 1] of pairs ``(T, P, 2 * embedding)`` (class first, then query)."""
        tasks = pairs.shape[0]
        h = pairs
        if self.kind == "conv":
            assert self.feature_map is not None
            channels, height, width = self.feature_map
            h = tf.transpose(tf.reshape(h, [-1, 2 * channels, height, width]), [0, 2, 3, 1])
            for name in CONV:
                h = tf.nn.conv2d(h, relation[f"{PREFIX}{name}.weight"], 1, PADDING_1) + relation[f"{PREFIX}{name}.bias"]
                h = tf.reshape(h, [tasks, -1, *h.shape[1:]])  # batch norm over each task's pairs
                h = tf.nn.relu(
                    batch_norm(h, relation[f"{PREFIX}{name}.norm.weight"], relation[f"{PREFIX}{name}.norm.bias"])
                )
                h = tf.reshape(h, [-1, *h.shape[2:]])
                if min(h.shape[1:3]) >= 2:
                    h = tf.nn.max_pool2d(h, 2, 2, "VALID")
            h = tf.reshape(tf.transpose(h, [0, 3, 1, 2]), [tasks, -1, math.prod(h.shape[1:])])  # channel-first
        else:
            for name in DENSE:
                h = tf.nn.relu(dense(h, relation[f"{PREFIX}{name}.weight"], relation[f"{PREFIX}{name}.bias"], False))
        h = tf.nn.relu(dense(h, relation[PREFIX + "fc1.weight"], relation[PREFIX + "fc1.bias"], False))
        return tf.sigmoid(dense(h, relation[PREFIX + "fc2.weight"], relation[PREFIX + "fc2.bias"], False))[:, :, 0]

    def class_features(self, features: Sequence[tf.Tensor], sx: tf.Tensor, sy: tf.Tensor) -> tf.Tensor:
        """``(T, ways, embedding)``: the sum of each class's support embeddings (zero if absent)."""
        member = tf.one_hot(sy, self.spec.output_size, dtype=sx.dtype)
        return tf.einsum("tsw,tsf->twf", member, self.model.embed(features, sx))

    def scores(
        self, features: Sequence[tf.Tensor], relation: Mapping[str, tf.Tensor], classes: tf.Tensor, x: tf.Tensor
    ) -> tf.Tensor:
        """``(T, Q, ways)`` relation scores of the examples ``x`` ``(T, Q, ...)`` to each class."""
        queries = self.model.embed(features, tf.cast(x, classes.dtype))
        tasks, ways, size = classes.shape
        shape = tf.stack([tasks, tf.shape(queries)[1], ways, size])
        pairs = tf.concat(
            [tf.broadcast_to(classes[:, None], shape), tf.broadcast_to(queries[:, :, None], shape)], axis=-1
        )
        scores = self.relation_scores(relation, tf.reshape(pairs, [tasks, -1, 2 * size]))
        return tf.reshape(scores, [tasks, -1, ways])

    def _present(self, sy: tf.Tensor) -> tf.Tensor:
        """``(T, ways)``: whether each class has support examples."""
        return tf.reduce_any(tf.equal(sy[:, :, None], tf.range(self.spec.output_size, dtype=sy.dtype)), axis=1)

    def logits(
        self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor, x: tf.Tensor
    ) -> tf.Tensor:
        """Relation scores ``(T, N, ways)``; ``-inf`` for classes absent from the support set."""
        return self.predict_from_support(features, extra, self.support_state(features, extra, sx, sy), x)

    def task_loss(
        self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The mean squared error of the relation scores against the one-hot labels, over the
        query examples and the classes of the episode, and the accuracy."""
        scores = self.scores(features, extra, self.class_features(features, sx, sy), qx)
        present = self._present(sy)
        mask = tf.cast(present, scores.dtype)[:, None, :]
        targets = tf.one_hot(qy, self.spec.output_size, dtype=scores.dtype)
        loss = tf.reduce_sum(tf.square(scores - targets) * mask, axis=[1, 2]) / (
            tf.reduce_sum(mask, axis=[1, 2]) * scores.shape[1]
        )
        masked = tf.where(present[:, None, :], scores, tf.constant(-float("inf"), scores.dtype))
        hits = tf.equal(tf.argmax(masked, axis=-1, output_type=qy.dtype), qy)
        return {"loss": loss, "accuracy": tf.reduce_mean(tf.cast(hits, scores.dtype), axis=1)}

    def support_state(self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor) -> Weights:
        """The class features and the mask of classes present in the support set."""
        return [self.class_features(features, sx, sy), tf.cast(self._present(sy), sx.dtype)]

    def predict_from_support(
        self, features: Sequence[tf.Tensor], extra: Extra, support: Sequence[tf.Tensor], x: tf.Tensor
    ) -> tf.Tensor:
        classes, present = support
        scores = self.scores(features, extra, classes, x)
        return tf.where(present[:, None, :] > 0, scores, tf.constant(-float("inf"), scores.dtype))

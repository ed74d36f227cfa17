"""The base of algorithms that adapt by a function of the support set, with no inner loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import MetaLearner, Weights

Extra = Mapping[str, tf.Tensor]


class SupportSetLearner(MetaLearner):
    """An algorithm whose task model is a function of the support set (prototypes, a
    closed-form head, class features): ProtoNets, R2-D2, Relation Networks.

    Subclasses give :meth:`logits`; the meta-gradient is that of the query loss
    (:meth:`task_loss`, cross-entropy by default) through it, an adapted model predicts
    with it, and evaluation reports ``loss_before`` as NaN (there is no inner loop). Every
    task sees the ``features.*`` weights (the head is built but unused) and ``self.extra``.
    """

    has_loss_before = False
    adapts_weights = False

    def trained_names(self) -> list[str]:
        """The feature weights (the head is built but unused)."""
        return list(self.model.names[: self.model.head_index])

    def logits(
        self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor, x: tf.Tensor
    ) -> tf.Tensor:
        """``(T, N, ways)`` outputs for ``x`` given each task's support set ``(sx, sy)``."""
        raise NotImplementedError

    def task_loss(
        self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Each task's query loss and accuracy (default: :meth:`loss_and_accuracy` of :meth:`logits`)."""
        return self.loss_and_accuracy(self.logits(features, extra, sx, sy, qx), qy)

    def support_state(self, features: Sequence[tf.Tensor], extra: Extra, sx: tf.Tensor, sy: tf.Tensor) -> Weights:
        """What an adapted model keeps of its support set (default: the set itself; override
        to keep what depends only on it, computed once)."""
        return [sx, sy]

    def predict_from_support(
        self, features: Sequence[tf.Tensor], extra: Extra, support: Sequence[tf.Tensor], x: tf.Tensor
    ) -> tf.Tensor:
        """An adapted model's outputs for ``x`` from its :meth:`support_state`."""
        sx, sy = support
        return self.logits(features, extra, sx, sy, x)

    def meta_gradients(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        with tf.GradientTape() as tape:
            metrics = self.task_loss(self.feature_weights, dict(self.extra), sx, sy, qx, qy)
            loss = tf.reduce_sum(metrics["loss"])
        return self.gradients(loss, tape), metrics

    def evaluate_tasks(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, steps: int
    ) -> dict[str, tf.Tensor]:
        return self.task_loss(self.feature_weights, dict(self.extra), sx, sy, qx, qy)

    def adapted_state(self, sx: tf.Tensor, sy: tf.Tensor, steps: int) -> Weights:
        """The feature weights, the extra meta-parameters, then :meth:`support_state`."""
        features = [tf.identity(v) for v in self.feature_weights]
        extra = {k: tf.identity(v) for k, v in self.extra.items()}
        return [*features, *extra.values(), *self.support_state(features, extra, sx, sy)]

    def predict_adapted(self, state: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        features, rest = state[: len(self.feature_weights)], state[len(self.feature_weights) :]
        extra = dict(zip(self.extra, rest[: len(self.extra)], strict=True))
        return self.predict_from_support(features, extra, rest[len(self.extra) :], x)

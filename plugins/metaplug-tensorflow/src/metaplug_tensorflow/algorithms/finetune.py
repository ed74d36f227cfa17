"""Fine-tuning baseline: pre-train on all training tasks jointly, fine-tune on each new task."""

from __future__ import annotations

import numpy as np

from metaplug.contract.hyperparameters import FineTuneOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.contract.regularization import check_new_head, regularised
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import MetaLearner, Weights, tile
from metaplug_tensorflow.losses import task_loss
from metaplug_tensorflow.models import _uniform, dense

PRETRAIN = "pretrain.head."


class FineTune(MetaLearner):
    """Transfer baseline (Finn et al. 2017's "pretrained").

    Pre-training (``meta_train_step``): classification trains ``features.*`` and a
    head over all ``spec.num_classes`` training classes (``pretrain.head.*``) with
    cross-entropy on each task's support and query examples together; regression
    fits the whole model to all tasks' points with MSE. Adaptation trains, by
    ``test_inner_steps`` gradient steps at ``inner_lr`` on the support set, a new
    zero-initialised head for the episode's ways (classification) or the model's own
    head (regression), together with ``features.*`` when ``finetune="all"``, on the
    support loss plus ``regularization_strength`` times the ``regularization``
    (:mod:`metaplug.contract.regularization`; ``l2-sp`` anchors the weights at the trained
    ones they start from, the new head at zero).
    """

    name = "finetune"
    Options = FineTuneOptions
    options: FineTuneOptions

    @property
    def classification(self) -> bool:
        return self.problem == "classification"

    def trained_names(self) -> list[str]:
        """Classification: the features (the pre-training head is ``pretrain.head.*``);
        regression: every weight."""
        self.model.require_parts(self.name)
        if self.classification and not self.model.linear_head:
            raise ConfigError(
                "finetune classifies with a new linear head: the model's head must be linear "
                "(a keras.layers.Dense without activation)"
            )
        return list(self.model.names[: self.model.head_index] if self.classification else self.model.names)

    def extra_parameters(self) -> dict[str, np.ndarray]:
        """Classification: the pre-training head over all training classes, initialised as
        the model's head is (from the backend's generator)."""
        if not self.classification:
            return {}
        if not self.spec.num_classes:
            raise ConfigError("finetune needs the number of training classes (spec.num_classes)")
        size, classes = int(self.model.variables[self.model.head_index].shape[0]), self.spec.num_classes
        rng = self.backend.rng
        return {
            PRETRAIN + "weight": _uniform(rng, (size, classes), size),
            PRETRAIN + "bias": _uniform(rng, (classes,), size),
        }

    def setup(self) -> None:
        """Classification fine-tunes a new head: it cannot be frozen in adaptation."""
        check_new_head(self.classification, self.freezing.adaptation)

    # -- pre-training ----------------------------------------------------------------

    def extra_train_inputs(self, batch: EpisodeBatch) -> tuple[tf.Tensor, ...]:
        if not self.classification:
            return ()
        if batch.classes is None:
            raise ConfigError("finetune pre-training needs the batch's class ids (batch.classes)")
        if int(np.max(batch.classes)) >= (self.spec.num_classes or 0):
            raise ConfigError(
                f"class id {int(np.max(batch.classes))} is outside the {self.spec.num_classes} training classes"
            )
        return (self.backend.tensor(np.asarray(batch.classes, dtype=np.int64)),)

    def meta_gradients(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, *classes: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        x, y = tf.concat([sx, qx], axis=1), tf.concat([sy, qy], axis=1)
        with tf.GradientTape() as tape:
            if self.classification:
                y = tf.gather(classes[0], y, batch_dims=1)
                weight, bias = self.extra[PRETRAIN + "weight"], self.extra[PRETRAIN + "bias"]
                outputs = dense(self.model.embed(self.feature_weights, x), weight, bias, per_task=False)
            else:
                outputs = self.model(self.model.variables, x)
            metrics = self.loss_and_accuracy(outputs, y)
            loss = tf.reduce_sum(metrics["loss"])
        return self.gradients(loss, tape), metrics

    # -- fine-tuning -------------------------------------------------------------------

    def _start(self, sx: tf.Tensor) -> Weights:
        """Per-task starting weights of the part that is fine-tuned."""
        num_tasks = sx.shape[0]
        k = self.model.head_index
        if self.classification:
            head = [tf.zeros([num_tasks, *v.shape], v.dtype) for v in self.model.variables[k:]]
        else:
            head = tile(self.model.variables[k:], num_tasks)
        return (tile(self.feature_weights, num_tasks) if self.options.finetune == "all" else []) + head

    def _forward(self, fast: Weights, x: tf.Tensor) -> tf.Tensor:
        """Outputs from the fine-tuned part; ``x`` is features when only the head is tuned."""
        if len(fast) == len(self.model.names):
            return self.forward_per_task(fast, x)
        return self.model.head(fast, x, per_task=True)

    def _inputs(self, x: tf.Tensor) -> tf.Tensor:
        if self.options.finetune == "head":
            return self.model.embed(self.feature_weights, x)
        return x

    def _finetune(self, sx: tf.Tensor, sy: tf.Tensor, steps: int) -> Weights:
        k = self.model.head_index
        names = (self.model.names[:k] if self.options.finetune == "all" else ()) + self.model.names[k:]
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        starts = {n: weights[n] for n in names if not (self.classification and n in self.model.names[k:])}
        o = self.options
        rule = regularised(self.rule, o.regularization, o.regularization_strength, starts)
        update = self.rule_update(names, {}, o.inner_lr, rule)
        return self.inner_loop(self._forward, self._start(sx), self._inputs(sx), sy, steps, update)

    def evaluate_tasks(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, steps: int
    ) -> dict[str, tf.Tensor]:
        start = self._start(sx)
        before = self._forward(start, self._inputs(qx))
        after = self._forward(self._finetune(sx, sy, steps), self._inputs(qx))
        return {**self.loss_and_accuracy(after, qy), "loss_before": task_loss(self.problem, before, qy)}

    def adapted_state(self, sx: tf.Tensor, sy: tf.Tensor, steps: int) -> Weights:
        fast = [w[0] for w in self._finetune(sx, sy, steps)]
        if len(fast) == len(self.model.names):
            return fast
        return [tf.identity(v) for v in self.feature_weights] + fast

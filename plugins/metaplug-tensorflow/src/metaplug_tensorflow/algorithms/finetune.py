"""Fine-tuning baseline: pre-train on all training tasks jointly, fine-tune on each new task."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from metaplug.errors import ConfigError
from metaplug.contract.interfaces import EpisodeBatch, TaskSpec
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import TFAlgorithm, Weights, check_int, check_positive, tile
from metaplug_tensorflow.backend import TensorFlowBackend
from metaplug_tensorflow.inner import InnerSGD
from metaplug_tensorflow.losses import task_losses
from metaplug_tensorflow.models import FunctionalModel, _uniform
from metaplug_tensorflow.optimizers import OuterOptimizer

MODES = ("all", "head")


class FineTune(TFAlgorithm):
    """Transfer baseline (Finn et al. 2017's "pretrained").

    Pre-training (``meta_train_step``): classification trains ``features.*`` and a
    head over all ``spec.num_classes`` training classes (``pretrain.head.*``) with
    cross-entropy on each task's support and query examples together; regression
    fits the whole model to all tasks' points with MSE. Adaptation trains, by
    ``test_inner_steps`` gradient steps at ``inner_lr`` on the support set, a new
    zero-initialised head for the episode's ways (classification) or the model's own
    head (regression), together with ``features.*`` when ``finetune="all"``.

    :param inner_lr: fine-tuning learning rate.
    :param test_inner_steps: fine-tuning steps in ``adapt``/``evaluate``.
    :param finetune: ``"all"`` (features and head) or ``"head"`` (features frozen).
    :param batching: ``"auto"``, ``"vectorized"`` or ``"loop"`` over the tasks of a batch.
    """

    name = "finetune"

    def __init__(self, backend: TensorFlowBackend | None = None, model: FunctionalModel | None = None,
                 spec: TaskSpec | None = None, optimizer: Callable[..., OuterOptimizer] | None = None,
                 inner_lr: float = 0.01, test_inner_steps: int = 10, finetune: str = "all",
                 batching: str = "auto") -> None:
        if spec is None:
            raise ConfigError("finetune needs the task spec")
        if finetune not in MODES:
            raise ConfigError(f"finetune must be one of {', '.join(MODES)}, got {finetune!r}")
        super().__init__(backend, model, spec, optimizer, batching)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.test_inner_steps = check_int("test_inner_steps", test_inner_steps, 0)
        self.finetune = finetune
        self.rule = InnerSGD()
        self.rule.init([], self.inner_lr)
        names, variables = self.model.names, self.model.variables
        k = self.model.head_index
        self.classify = self.problem == "classification"
        if not self.classify:
            self.set_meta_parameters({f"model.{n}": v for n, v in zip(names, variables)})
            return
        if not spec.num_classes:
            raise ConfigError("finetune needs the number of training classes (spec.num_classes)")
        size = int(variables[k].shape[0])
        rng = self.backend.rng
        with self.backend.scope():
            self.pretrain_head = [
                tf.Variable(_uniform(rng, (size, spec.num_classes), size), dtype=self.backend.dtype),
                tf.Variable(_uniform(rng, (spec.num_classes,), size), dtype=self.backend.dtype),
            ]
        trainables = {f"model.{n}": v for n, v in zip(names[:k], variables[:k])}
        trainables["pretrain.head.weight"], trainables["pretrain.head.bias"] = self.pretrain_head
        self.set_meta_parameters(trainables)

    @property
    def feature_weights(self) -> list[tf.Variable]:
        return self.model.variables[:self.model.head_index]

    def evaluation_steps(self, steps: int | None) -> int:
        return self.test_inner_steps if steps is None else check_int("steps", steps, 0)

    # -- pre-training ----------------------------------------------------------------

    def extra_train_inputs(self, batch: EpisodeBatch) -> tuple[tf.Tensor, ...]:
        if not self.classify:
            return ()
        if batch.classes is None:
            raise ConfigError("finetune pre-training needs the batch's class ids (batch.classes)")
        if int(np.max(batch.classes)) >= self.spec.num_classes:
            raise ConfigError(f"class id {int(np.max(batch.classes))} is outside the "
                              f"{self.spec.num_classes} training classes")
        with self.backend.scope():
            return (tf.constant(batch.classes, dtype=tf.int64),)

    def meta_gradients(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor,
                       *classes: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        x, y = tf.concat([sx, qx], axis=1), tf.concat([sy, qy], axis=1)
        with tf.GradientTape() as tape:
            if self.classify:
                y = tf.gather(classes[0], y, batch_dims=1)
                outputs = self.model.head(self.pretrain_head, self.model.features(self.feature_weights, x))
            else:
                outputs = self.model(self.model.variables, x)
            metrics = self.metrics(outputs, y)
            loss = tf.reduce_sum(metrics["loss"])
        return self.gradients(loss, tape), metrics

    # -- fine-tuning -------------------------------------------------------------------

    def _start(self, sx: tf.Tensor) -> Weights:
        """Per-task starting weights of the part that is fine-tuned."""
        num_tasks = sx.shape[0]
        k = self.model.head_index
        if self.classify:
            head = [tf.zeros([num_tasks, *v.shape], v.dtype) for v in self.model.variables[k:]]
        else:
            head = tile(self.model.variables[k:], num_tasks)
        return (tile(self.feature_weights, num_tasks) if self.finetune == "all" else []) + head

    def _forward(self, fast: Weights, x: tf.Tensor) -> tf.Tensor:
        """Outputs from the fine-tuned part; ``x`` is features when only the head is tuned."""
        if len(fast) == len(self.model.names):
            return self.forward_per_task(fast, x)
        return self.model.head(fast, x, per_task=True)

    def _inputs(self, x: tf.Tensor) -> tf.Tensor:
        if self.finetune == "head":
            return self.model.features(self.feature_weights, x)
        return x

    def _tune(self, sx: tf.Tensor, sy: tf.Tensor, steps: int) -> Weights:
        return self.descend(self._forward, self._start(sx), self._inputs(sx), sy, steps, self.rule.step)

    def evaluate_tasks(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor,
                       steps: int) -> dict[str, tf.Tensor]:
        start = self._start(sx)
        before = self._forward(start, self._inputs(qx))
        after = self._forward(self._tune(sx, sy, steps), self._inputs(qx))
        return {**self.metrics(after, qy), "loss_before": task_losses(self.problem, before, qy)}

    def adapt_task(self, sx: tf.Tensor, sy: tf.Tensor, steps: int) -> Weights:
        fast = [w[0] for w in self._tune(sx, sy, steps)]
        if len(fast) == len(self.model.names):
            return fast
        return [tf.identity(v) for v in self.feature_weights] + fast

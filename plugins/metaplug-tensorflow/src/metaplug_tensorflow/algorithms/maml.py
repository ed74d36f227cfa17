"""MAML and its relatives: first-order MAML, ANIL and Meta-SGD.

The inner loop adapts per-task copies of the weights with the inner rule; the
meta-gradient of the mean query loss flows back through it by nested
``tf.GradientTape`` (second order unless ``first_order``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from metaplug.errors import ConfigError
from metaplug.contract.interfaces import TaskSpec
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import TFAlgorithm, Weights, check_int, check_positive, tile
from metaplug_tensorflow.backend import TensorFlowBackend
from metaplug_tensorflow.losses import task_losses
from metaplug_tensorflow.models import FunctionalModel
from metaplug_tensorflow.optimizers import OuterOptimizer


def load_inner_rule(name: str) -> object:
    """Instantiate the inner rule registered as ``name`` for the tensorflow backend."""
    from metaplug.plugins.discovery import registry

    record = registry().get("optimizers", name, backend="tensorflow")
    if record.role != "inner":
        raise ConfigError(f"inner_rule {name!r} is an outer optimizer; choose an inner rule such as 'inner-sgd'")
    return record.load()()


def per_query(forward: Callable[[tf.Tensor], tf.Tensor], sx: tf.Tensor, qx: tf.Tensor) -> tf.Tensor:
    """Non-transductive outputs ``(T, Q, out)``: ``forward`` (a model on inputs ``(R, N, ...)``,
    each row its own batch) on the support examples ``sx`` ``(T, S, ...)`` followed by one
    query example of ``qx`` ``(T, Q, ...)``, keeping the last output of each such batch."""
    tasks, size = sx.shape[0], sx.shape[1]
    queries = qx.shape[1] if qx.shape[1] is not None else tf.shape(qx)[1]  # dynamic in a served model
    x = tf.concat([tf.repeat(sx[:, None], queries, axis=1), qx[:, :, None]], axis=2)  # (T, Q, S + 1, ...)
    outputs = forward(tf.reshape(x, [-1, size + 1, *sx.shape[2:]]))
    return tf.reshape(outputs[:, -1], [tasks, -1, outputs.shape[-1]])


class GradientMetaLearner(TFAlgorithm):
    """Adapts (part of) the model by gradient steps on the support set: shared by the
    MAML family and Reptile. ``head_only`` adapts ``head.*`` on fixed features.

    ``transductive`` (evaluation only): the adapted model predicts a task's query examples
    in one batch (batch norm over all of them), or, when false, each query example in a
    batch of the support set and that one example, taking the last output
    (supervised-reptile's ``_test_predictions(transductive=False)``)."""

    head_only = False

    def __init__(self, backend: TensorFlowBackend | None, model: FunctionalModel | None, spec: TaskSpec,
                 optimizer: Callable[..., OuterOptimizer] | None, inner_lr: float, inner_steps: int,
                 test_inner_steps: int | None, inner_rule: str, batching: str,
                 transductive: bool = True) -> None:
        if not isinstance(transductive, bool):
            raise ConfigError(f"transductive must be true or false, got {transductive!r}")
        self.transductive = transductive
        super().__init__(backend, model, spec, optimizer, batching)
        self.inner_lr = check_positive("inner_lr", inner_lr)
        self.inner_steps = check_int("inner_steps", inner_steps, 1)
        self.test_inner_steps = (self.inner_steps if test_inner_steps is None
                                 else check_int("test_inner_steps", test_inner_steps, 0))
        self.rule = load_inner_rule(inner_rule)
        first = self.model.head_index if self.head_only else 0
        self.adapted = list(range(first, len(self.model.names)))
        with self.backend.scope():
            self.learnables = self.rule.init([self.model.variables[i] for i in self.adapted], self.inner_lr)
        trainables = {f"model.{n}": v for n, v in zip(self.model.names, self.model.variables)}
        if self.learnables:  # none, or one per adapted weight
            for i, learnable in zip(self.adapted, self.learnables, strict=True):
                trainables[f"inner.{self.model.names[i]}"] = learnable
        self.set_meta_parameters(trainables)

    def evaluation_steps(self, steps: int | None) -> int:
        return self.test_inner_steps if steps is None else check_int("steps", steps, 0)

    def _inputs(self, *xs: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """What the adapted part sees: the inputs, or (``head_only``) their features."""
        if not self.head_only:
            return xs
        features = self.model.variables[:self.model.head_index]
        return tuple(self.model.features(features, x) for x in xs)

    def _forward(self, fast: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        if self.head_only:
            return self.model.head(fast, x, per_task=True)
        return self.forward_per_task(fast, x)

    def adapt_tasks(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, second_order: bool = False,
                    *query: tf.Tensor) -> tuple[Weights, tuple[tf.Tensor, ...]]:
        """Per-task adapted weights (of the adapted part) and the outputs on ``query`` inputs."""
        xs, *xq = self._inputs(sx, *query)
        fast = tile([self.model.variables[i] for i in self.adapted], sx.shape[0])
        fast = self.descend(self._forward, fast, xs, sy, steps, self.rule.step, self.learnables, second_order)
        return fast, tuple(self._forward(fast, x) for x in xq)

    def query_outputs(self, fast: Weights | None, sx: tf.Tensor, qx: tf.Tensor) -> tf.Tensor:
        """Outputs ``(T, Q, out)`` on the query inputs ``qx`` of the per-task adapted part
        ``fast`` (``None``: the meta-parameters), transductive or not (see the class)."""
        if fast is None:
            return self.model(self.model.variables, qx) if self.transductive else per_query(
                lambda x: self.model(self.model.variables, x), sx, qx)
        if self.transductive:
            (x,) = self._inputs(qx)
            return self._forward(fast, x)

        def forward(x: tf.Tensor) -> tf.Tensor:
            (h,) = self._inputs(x)
            if sx.shape[0] == 1:  # one set of weights: one batched forward, batch norm per row
                shared = [w[0] for w in fast]
                return self.model.head(shared, h) if self.head_only else self.model(shared, h)
            return self._forward([tf.repeat(w, qx.shape[1], axis=0) for w in fast], h)

        return per_query(forward, sx, qx)

    def evaluation_weights(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        """Per-task adapted weights (of the adapted part) in ``evaluate`` and ``adapt``."""
        return self.adapt_tasks(sx, sy, steps)[0]

    def evaluate_tasks(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor,
                       steps: int, *extra: tf.Tensor) -> dict[str, tf.Tensor]:
        before = self.query_outputs(None, sx, qx)
        after = self.query_outputs(self.evaluation_weights(sx, sy, steps, *extra), sx, qx)
        return {**self.metrics(after, qy), "loss_before": task_losses(self.problem, before, qy)}

    def adapt_task(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        fast = self.evaluation_weights(sx, sy, steps, *extra)
        weights = [tf.identity(v) for v in self.model.variables]
        for i, w in zip(self.adapted, fast, strict=True):
            weights[i] = w[0]
        return weights if self.transductive else [*weights, sx]  # predicts with the support set

    def predict_task(self, weights: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        if self.transductive:
            return self.model(weights, x)
        *weights, sx = weights
        return per_query(lambda batch: self.model(weights, batch), sx, x)


class MAML(GradientMetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017), second order unless ``first_order``.

    :param inner_lr: inner-loop learning rate (initial rate for learned rules).
    :param inner_steps: inner steps during meta-training.
    :param test_inner_steps: inner steps in ``adapt``/``evaluate`` (``None``: ``inner_steps``).
    :param first_order: treat inner gradients as constants (FOMAML).
    :param inner_rule: inner-role optimizer component for the tensorflow backend.
    :param transductive: at evaluation, predict all query examples in one batch (else each
        with the support set; see :class:`GradientMetaLearner`).
    :param batching: ``"auto"``, ``"vectorized"`` or ``"loop"`` over the tasks of a batch.
    """

    name = "maml"

    def __init__(self, backend: TensorFlowBackend | None = None, model: FunctionalModel | None = None,
                 spec: TaskSpec | None = None, optimizer: Callable[..., OuterOptimizer] | None = None,
                 inner_lr: float = 0.01, inner_steps: int = 1, test_inner_steps: int | None = None,
                 first_order: bool = False, inner_rule: str = "inner-sgd", batching: str = "auto",
                 transductive: bool = True) -> None:
        if spec is None:
            raise ConfigError(f"{self.name} needs the task spec")
        self.first_order = bool(first_order)
        super().__init__(backend, model, spec, optimizer, inner_lr, inner_steps, test_inner_steps,
                         inner_rule, batching, transductive)

    def meta_gradients(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor,
                       qy: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        with tf.GradientTape() as tape:
            _, (outputs,) = self.adapt_tasks(sx, sy, self.inner_steps, not self.first_order, qx)
            metrics = self.metrics(outputs, qy)
            loss = tf.reduce_sum(metrics["loss"])
        return self.gradients(loss, tape), metrics


class FOMAML(MAML):
    """First-order MAML: MAML with the inner gradients treated as constants."""

    name = "fomaml"

    def __init__(self, backend: TensorFlowBackend | None = None, model: FunctionalModel | None = None,
                 spec: TaskSpec | None = None, optimizer: Callable[..., OuterOptimizer] | None = None,
                 inner_lr: float = 0.01, inner_steps: int = 1, test_inner_steps: int | None = None,
                 inner_rule: str = "inner-sgd", batching: str = "auto", transductive: bool = True) -> None:
        super().__init__(backend, model, spec, optimizer, inner_lr, inner_steps, test_inner_steps,
                         True, inner_rule, batching, transductive)


class ANIL(MAML):
    """Almost No Inner Loop (Raghu et al. 2020): MAML whose inner loop adapts only ``head.*``."""

    name = "anil"
    head_only = True


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with learned per-parameter inner rates
    (``inner-metasgd``), initialised to ``inner_lr`` and saved as ``inner.<name>``."""

    name = "metasgd"

    def __init__(self, backend: TensorFlowBackend | None = None, model: FunctionalModel | None = None,
                 spec: TaskSpec | None = None, optimizer: Callable[..., OuterOptimizer] | None = None,
                 inner_lr: float = 0.01, inner_steps: int = 1, test_inner_steps: int | None = None,
                 first_order: bool = False, inner_rule: str = "inner-metasgd", batching: str = "auto",
                 transductive: bool = True) -> None:
        super().__init__(backend, model, spec, optimizer, inner_lr, inner_steps, test_inner_steps,
                         first_order, inner_rule, batching, transductive)

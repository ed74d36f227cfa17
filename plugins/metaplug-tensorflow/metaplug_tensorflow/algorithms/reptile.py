"""Reptile (Nichol et al. 2018): move the initialisation towards the adapted weights."""

from __future__ import annotations

from collections.abc import Callable

from metaplug.errors import ConfigError
from metaplug.interfaces import TaskSpec
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.maml import GradientMetaLearner
from metaplug_tensorflow.backend import TensorFlowBackend
from metaplug_tensorflow.models import FunctionalModel
from metaplug_tensorflow.optimizers import OuterOptimizer


class Reptile(GradientMetaLearner):
    """Reptile: the outer "gradient" is ``theta - mean_i(phi_i)``, ``phi_i`` the weights after
    ``inner_steps`` plain gradient steps on task ``i``'s support set; with SGD at rate
    ``eps`` this is ``theta <- theta + eps (mean phi - theta)``.

    :param inner_lr: inner-loop learning rate.
    :param inner_steps: inner steps during meta-training.
    :param test_inner_steps: inner steps in ``adapt``/``evaluate`` (``None``: ``inner_steps``).
    :param batching: ``"auto"``, ``"vectorized"`` or ``"loop"`` over the tasks of a batch.
    """

    name = "reptile"

    def __init__(self, backend: TensorFlowBackend | None = None, model: FunctionalModel | None = None,
                 spec: TaskSpec | None = None, optimizer: Callable[..., OuterOptimizer] | None = None,
                 inner_lr: float = 0.01, inner_steps: int = 5, test_inner_steps: int | None = None,
                 batching: str = "auto") -> None:
        if spec is None:
            raise ConfigError("reptile needs the task spec")
        super().__init__(backend, model, spec, optimizer, inner_lr, inner_steps, test_inner_steps,
                         "inner-sgd", batching)

    def meta_gradients(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor,
                       qy: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        fast, (outputs,) = self.adapt_tasks(sx, sy, self.inner_steps, False, qx)
        sums = [tf.reduce_sum(p[None] - phi, axis=0) for p, phi in zip(self.model.variables, fast, strict=True)]
        return sums, self.metrics(outputs, qy)

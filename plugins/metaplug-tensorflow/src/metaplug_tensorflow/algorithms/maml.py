"""MAML (second and first order), ANIL and Meta-SGD: gradients through the inner loop.

The inner loop adapts per-task copies of the weights with the inner rule; the
meta-gradient of the mean query loss flows back through it by nested
``tf.GradientTape`` (second order unless ``first_order``).
"""

from __future__ import annotations

from metaplug.contract.hyperparameters import FOMAMLOptions, MAMLOptions, MetaSGDOptions
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.gradient import GradientMetaLearner


class MAML(GradientMetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017).

    The meta-gradient flows through ``inner_steps`` steps of the inner rule on each task's
    support set (second order unless :attr:`first_order`). The rule is ``rule=`` (the host
    passes the one the ``inner_rule`` option names) or, built from Python without it, the
    built-in rule of that name (see :mod:`metaplug_tensorflow.inner`).
    ``transductive=False`` predicts each query example with the support set in its batch
    (see :class:`~metaplug_tensorflow.algorithms.gradient.GradientMetaLearner`).
    """

    name = "maml"
    Options = MAMLOptions
    options: MAMLOptions

    @property
    def first_order(self) -> bool:
        """Whether the inner gradients are constants for the meta-gradient (the
        ``first_order`` option; FOMAML sets it for good)."""
        return self.options.first_order

    def meta_gradients(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        with tf.GradientTape() as tape:
            h_support, h_query = self.task_inputs(sx), self.task_inputs(qx)
            fast = self.adapt_tasks(h_support, sy, self.options.inner_steps, second_order=not self.first_order)
            metrics = self.loss_and_accuracy(self.task_output(fast, h_query), qy)
            loss = tf.reduce_sum(metrics["loss"])
        return self.gradients(loss, tape), metrics


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017): the inner gradients are treated as constants."""

    name = "fomaml"
    Options = FOMAMLOptions  # type: ignore[assignment]
    first_order = True


class ANIL(MAML):
    """Almost No Inner Loop (Raghu et al. 2020): MAML whose inner loop adapts only ``head.*``."""

    name = "anil"
    head_only = True


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with a learned inner rate per weight entry (the
    ``inner-metasgd`` rule), initialised to ``inner_lr`` and saved as ``inner.<weight name>``."""

    name = "metasgd"
    Options = MetaSGDOptions

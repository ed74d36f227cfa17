"""Inner-loop update rules (``role="inner"`` optimizers) and their small interface.

An inner rule is a class constructed with no arguments. An algorithm calls

``init(params, lr) -> list[tf.Variable]``
    once, with the meta-parameters it adapts (``tf.Variable``, TensorFlow layout)
    and the ``inner_lr`` hyper-parameter; returns the rule's learnable
    meta-parameters (possibly none). They are trained by the outer optimizer and
    saved as ``inner.<param name>`` (one per adapted weight, same shape) in the
    algorithm's state.
``step(params, grads, learnables) -> list[tf.Tensor]``
    inside the inner loop, with the current weights and their gradients; returns
    the new weights as tensors. ``params`` and ``grads`` may carry a leading task
    axis that the learnables lack (broadcast them). Must use only differentiable
    TensorFlow ops and never assign to variables, or the meta-gradient is cut.

Register a third-party rule with ``Component(name, summary, target="pkg.mod:Rule",
backends=("tensorflow",), role="inner")``; ``maml`` and ``anil`` load it by name
through ``inner_rule``.
"""

from __future__ import annotations

from collections.abc import Sequence

from metaplug_tensorflow._tf import tf


class InnerSGD:
    """Plain gradient descent ``p - lr * grad``; nothing learnable."""

    def __init__(self) -> None:
        self.lr = 0.0

    def init(self, params: Sequence[tf.Variable], lr: float) -> list[tf.Variable]:
        self.lr = float(lr)
        return []

    def step(self, params: Sequence[tf.Tensor], grads: Sequence[tf.Tensor],
             learnables: Sequence[tf.Variable]) -> list[tf.Tensor]:
        return [p - self.lr * g for p, g in zip(params, grads, strict=True)]


class InnerMetaSGD:
    """Meta-SGD: ``p - alpha * grad`` with a learned rate ``alpha`` per weight element,
    initialised to ``lr`` (Li et al. 2017)."""

    def init(self, params: Sequence[tf.Variable], lr: float) -> list[tf.Variable]:
        return [tf.Variable(tf.fill(p.shape, tf.constant(lr, p.dtype)), name=f"rate_{i}")
                for i, p in enumerate(params)]

    def step(self, params: Sequence[tf.Tensor], grads: Sequence[tf.Tensor],
             learnables: Sequence[tf.Variable]) -> list[tf.Tensor]:
        return [p - a * g for p, g, a in zip(params, grads, learnables, strict=True)]

"""Inner-loop update rules (the ``role="inner"`` optimizers) on TensorFlow.

A rule implements :class:`metaplug.contract.interfaces.InnerRule`: a class constructed
with no arguments, with ``init(params, lr)`` and ``step(params, grads, learnables, lr)``
on name-keyed mappings of tensors. Register it under the ``optimizers`` kind with
``role="inner"`` and ``backends=("tensorflow",)``; ``maml``, ``fomaml``, ``anil`` and
``metasgd`` name it in their ``inner_rule`` option, and the host passes the instance as
``rule=``. ``step`` runs inside ``tf.function`` and is differentiated through: use only
differentiable TensorFlow ops, never assign to variables. ``params`` and ``grads`` carry
a leading task axis that the learnables lack, so write updates that broadcast::

    class InnerSignSGD:
        def init(self, params, lr):
            return {}                              # nothing learned
        def step(self, params, grads, learnables, lr):
            return {n: p - lr * tf.sign(grads[n]) for n, p in params.items()}
"""

from __future__ import annotations

from collections.abc import Mapping

from metaplug.contract.interfaces import InnerRule, resolve_inner_rule
from metaplug_tensorflow._tf import tf

Params = Mapping[str, tf.Tensor]


class InnerSGD:
    """Plain gradient descent ``p - lr * grad``."""

    def init(self, params: Params, lr: float) -> dict[str, tf.Tensor]:
        return {}

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, tf.Tensor]:
        return {n: p - lr * grads[n] for n, p in params.items()}


class InnerMetaSGD:
    """Meta-SGD: ``p - alpha * grad`` with a learned rate ``alpha`` per parameter entry,
    initialised to ``lr`` (Li et al. 2017)."""

    def init(self, params: Params, lr: float) -> dict[str, tf.Tensor]:
        return {n: tf.fill(p.shape, tf.constant(lr, p.dtype)) for n, p in params.items()}

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, tf.Tensor]:
        return {n: p - learnables[n] * grads[n] for n, p in params.items()}


BUILTIN_RULES: dict[str, type[InnerRule]] = {"inner-sgd": InnerSGD, "inner-metasgd": InnerMetaSGD}
"""The rules an algorithm built directly in Python (without ``rule=``) finds by name."""


def resolve_rule(rule: InnerRule | None, name: str | None, algorithm: str) -> InnerRule:
    """The inner rule of ``algorithm`` whose ``inner_rule`` option is ``name`` (see
    :func:`metaplug.contract.interfaces.resolve_inner_rule`; :class:`InnerSGD` without that
    option)."""
    return resolve_inner_rule(rule, name, BUILTIN_RULES, InnerSGD, algorithm, "metaplug-tensorflow")

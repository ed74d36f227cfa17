"""Inner-loop update rules (the ``role="inner"`` optimizers) on TensorFlow.

A rule implements :class:`metaplug.contract.interfaces.InnerRule`: a class constructed
with no arguments, with ``init(params, lr)`` and ``step(params, grads, learnables, lr)``
on name-keyed mappings of tensors. Register it under the ``optimizers`` kind with
``role="inner"`` and ``backends=("tensorflow",)``; ``maml``, ``fomaml``, ``anil``,
``metasgd`` and ``mamlpp`` name it in their ``inner_rule`` option, and the host passes the instance as
``rule=``. ``step`` runs inside ``tf.function`` and is differentiated through: use only
differentiable TensorFlow ops, never assign to variables. ``params`` and ``grads`` carry
a leading task axis that the learnables lack, so write updates that broadcast::

    class InnerSignSGD:
        def init(self, params, lr):
            return {}                              # nothing learned
        def step(self, params, grads, learnables, lr):
            return {n: p - lr * tf.sign(grads[n]) for n, p in params.items()}

A rule with per-task state (``inner-adam``, ``inner-rmsprop``) also implements
``init_state(params)`` and ``step_with_state(params, grads, learnables, lr, state)``
(:class:`metaplug.contract.interfaces.StatefulInnerRule`); the inner loop starts it afresh
for every task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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


def safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with a zero derivative at 0 (not infinity): a weight whose
    gradient is exactly zero (a conv bias before batch norm) keeps finite second-order terms."""
    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


class InnerAdam:
    """Adam (Kingma and Ba 2015) as a differentiable inner rule, in PyTorch's form:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p - lr / (1 - b1^t) * m /
    (sqrt(v) / sqrt(1 - b2^t) + eps)``. The moments are per-task state, zero at the start of
    every adaptation; second-order MAML differentiates through them."""

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas, self.eps = betas, eps

    def init(self, params: Params, lr: float) -> dict[str, tf.Tensor]:
        return {}

    def init_state(self, params: Params) -> dict[str, tuple[int, tf.Tensor, tf.Tensor]]:
        return {n: (0, tf.zeros_like(p), tf.zeros_like(p)) for n, p in params.items()}

    def step_with_state(
        self, params: Params, grads: Params, learnables: Params, lr: Any, state: Mapping[str, Any]
    ) -> tuple[dict[str, tf.Tensor], dict[str, Any]]:
        beta1, beta2 = self.betas
        new, after = {}, {}
        for n, p in params.items():
            t, m, v = state[n]
            g, t = grads[n], t + 1
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            denom = safe_sqrt(v) / math.sqrt(1 - beta2**t) + self.eps
            new[n] = p - (lr / (1 - beta1**t)) * m / denom
            after[n] = (t, m, v)
        return new, after

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, tf.Tensor]:
        return self.step_with_state(params, grads, learnables, lr, self.init_state(params))[0]


class InnerRMSprop:
    """RMSprop as a differentiable inner rule, in PyTorch's form (no momentum, not centred):
    ``v = alpha v + (1 - alpha) g^2``, ``p - lr * g / (sqrt(v) + eps)``. The average is per-task
    state, zero at the start of every adaptation; second-order MAML differentiates through it."""

    def __init__(self, alpha: float = 0.99, eps: float = 1e-8) -> None:
        self.alpha, self.eps = alpha, eps

    def init(self, params: Params, lr: float) -> dict[str, tf.Tensor]:
        return {}

    def init_state(self, params: Params) -> dict[str, tf.Tensor]:
        return {n: tf.zeros_like(p) for n, p in params.items()}

    def step_with_state(
        self, params: Params, grads: Params, learnables: Params, lr: Any, state: Mapping[str, Any]
    ) -> tuple[dict[str, tf.Tensor], dict[str, Any]]:
        new, after = {}, {}
        for n, p in params.items():
            g = grads[n]
            v = self.alpha * state[n] + (1 - self.alpha) * g * g
            new[n] = p - lr * g / (safe_sqrt(v) + self.eps)
            after[n] = v
        return new, after

    def step(self, params: Params, grads: Params, learnables: Params, lr: float) -> dict[str, tf.Tensor]:
        return self.step_with_state(params, grads, learnables, lr, self.init_state(params))[0]


BUILTIN_RULES: dict[str, type[InnerRule]] = {
    "inner-sgd": InnerSGD,
    "inner-metasgd": InnerMetaSGD,
    "inner-adam": InnerAdam,
    "inner-rmsprop": InnerRMSprop,
}
"""The rules an algorithm built directly in Python (without ``rule=``) finds by name."""


def resolve_rule(rule: InnerRule | None, name: str | None, algorithm: str) -> InnerRule:
    """The inner rule of ``algorithm`` whose ``inner_rule`` option is ``name`` (see
    :func:`metaplug.contract.interfaces.resolve_inner_rule`; :class:`InnerSGD` without that
    option)."""
    return resolve_inner_rule(rule, name, BUILTIN_RULES, InnerSGD, algorithm, "metaplug-tensorflow")

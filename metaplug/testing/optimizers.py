"""Conformance checks for optimizers: outer ones step and keep their state, inner rules adapt."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import pytest

from metaplug.testing.algorithms import AlgorithmConformance
from metaplug.testing.components import ComponentConformance

QUADRATIC_START = (3.0, -2.0, 0.5)
QUADRATIC_SCALES = (1.0, 4.0, 0.25)


def quadratic_loss(values: Any, scales: Any) -> Any:
    """``sum(scale * x^2)``: minimum 0 at the origin, differently curved per coordinate."""
    return (scales * values**2).sum() if hasattr(values, "sum") else sum(s * v * v for v, s in zip(values, scales))


def minimize_with_torch(factory: Any, lr: float, steps: int) -> tuple[float, float]:
    import torch

    x = torch.nn.Parameter(torch.tensor(QUADRATIC_START))
    scales = torch.tensor(QUADRATIC_SCALES)
    optimizer = factory([x], lr=lr)
    first = float(quadratic_loss(x.detach(), scales))
    for _ in range(steps):
        optimizer.zero_grad()
        quadratic_loss(x, scales).backward()
        optimizer.step()
    return first, float(quadratic_loss(x.detach(), scales))


def minimize_with_tensorflow(factory: Any, lr: float, steps: int) -> tuple[float, float]:
    """With the TensorFlow plugin's optimizer interface: ``factory(variables, lr=...)``
    returns an object whose ``apply(grads)`` updates the variables."""
    import tensorflow as tf

    x = tf.Variable(QUADRATIC_START, dtype=tf.float32)
    scales = tf.constant(QUADRATIC_SCALES)
    optimizer = factory([x], lr=lr)
    first = float(quadratic_loss(x, scales))
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = quadratic_loss(x, scales)
        optimizer.apply(tape.gradient(loss, [x]))
    return first, float(quadratic_loss(x, scales))


MINIMIZERS = {"torch": minimize_with_torch, "tensorflow": minimize_with_tensorflow}
"""How to drive an outer optimizer of each backend over the quadratic."""


def inner_step_with_torch(rule: Any, lr: float) -> tuple[Any, Any]:
    """One step of an inner rule through ``metaplug_torch.inner.InnerRule``: ``(before, after)``."""
    import torch
    from metaplug_torch.inner import InnerRule

    assert isinstance(rule, InnerRule), "torch inner rules implement metaplug_torch.inner.InnerRule"
    params = {"a.weight": torch.tensor(QUADRATIC_START), "b.bias": torch.tensor([1.0])}
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    after = rule.step(params, grads, rule.init(params, lr), lr)
    assert set(after) == set(params), "step() must return every adapted parameter by name"
    return [p.numpy() for p in params.values()], [after[n].detach().numpy() for n in params]


def inner_step_with_tensorflow(rule: Any, lr: float) -> tuple[Any, Any]:
    """One step of an inner rule through metaplug-tensorflow's ``init``/``step`` interface."""
    import tensorflow as tf

    params = [tf.constant(QUADRATIC_START), tf.constant([1.0])]
    learnables = rule.init([tf.Variable(p) for p in params], lr)
    after = rule.step(params, [tf.ones_like(p) for p in params], learnables)
    assert len(after) == len(params), "step() must return one tensor per adapted weight"
    return [p.numpy() for p in params], [tf.convert_to_tensor(a).numpy() for a in after]


INNER_STEPPERS = {"torch": inner_step_with_torch, "tensorflow": inner_step_with_tensorflow}
"""How to take one step of an inner rule of each backend (its documented interface)."""


class OptimizerConformance(ComponentConformance):
    """Subclass with ``optimizer = "name"`` and ``backend = "torch"``.

    Outer optimizers must reduce a quadratic and, used by :attr:`reference_algorithm`,
    round-trip their state; inner rules are run as that algorithm's ``inner_rule``
    through the algorithm checks (adaptation, determinism, state).
    """

    kind: ClassVar[str] = "optimizers"
    optimizer: ClassVar[str] = ""
    """Name of the optimizer under test."""
    reference_algorithm: ClassVar[str] = "maml"
    """An algorithm of :attr:`backend` that uses an outer optimizer and takes ``inner_rule``."""
    quadratic_lr: ClassVar[float] = 0.05
    quadratic_steps: ClassVar[int] = 100

    @classmethod
    def component_name(cls) -> str:
        return cls.optimizer

    def minimize_quadratic(self, factory: Any) -> tuple[float, float]:
        """Loss of the quadratic before and after ``quadratic_steps`` steps; override for a
        backend other than torch and tensorflow."""
        if self.backend not in MINIMIZERS:
            pytest.skip(f"no quadratic driver for backend {self.backend!r}; override minimize_quadratic()")
        return MINIMIZERS[self.backend](factory, self.quadratic_lr, self.quadratic_steps)

    def algorithm_checks(self) -> AlgorithmConformance:
        """The algorithm checks of :attr:`reference_algorithm` using this optimizer."""
        return _algorithm_checks(type(self))()

    def test_outer_optimizer_reduces_a_quadratic(self) -> None:
        if self.record().role != "outer":
            pytest.skip("inner rules are checked through an algorithm")
        first, last = self.minimize_quadratic(self.load())
        assert last < 0.1 * first, f"{self.quadratic_steps} steps took the quadratic from {first:.4f} only to {last:.4f}"

    def test_state_round_trips_through_an_algorithm(self) -> None:
        self.algorithm_checks().test_state_round_trips_through_npz("regression")

    def test_training_is_deterministic_under_seed(self) -> None:
        self.algorithm_checks().test_deterministic_under_seed("regression")

    def inner_step(self, rule: Any) -> tuple[Any, Any]:
        """Weights before and after one step of ``rule`` with all-positive gradients; override
        for a backend other than torch and tensorflow."""
        if self.backend not in INNER_STEPPERS:
            pytest.skip(f"no inner-rule driver for backend {self.backend!r}; override inner_step()")
        return INNER_STEPPERS[self.backend](rule, 0.1)

    def test_inner_rule_follows_the_backend_interface(self) -> None:
        if self.record().role != "inner":
            pytest.skip("outer optimizers are checked on a quadratic")
        before, after = self.inner_step(self.load()())
        for old, new in zip(before, after, strict=True):
            assert new.shape == old.shape, "an inner step changed a weight's shape"
            assert (new < old).all(), "a step along positive gradients must decrease every weight"

    def test_inner_rule_adapts(self) -> None:
        if self.record().role != "inner":
            pytest.skip("outer optimizers do not adapt to tasks")
        self.algorithm_checks().test_adaptation_lowers_query_loss("regression")


@functools.lru_cache(maxsize=None)
def _algorithm_checks(cls: type[OptimizerConformance]) -> type[AlgorithmConformance]:
    attributes: dict[str, Any] = {"algorithm": cls.reference_algorithm, "backend": cls.backend}
    from metaplug.plugins.discovery import registry

    role = registry().get("optimizers", cls.optimizer, cls.backend).role
    if role == "outer":
        attributes["optimizer"] = cls.optimizer
    else:
        attributes["hyperparameters"] = {"inner_rule": cls.optimizer}
    return type(f"{cls.__name__}With{cls.reference_algorithm.capitalize()}", (AlgorithmConformance,), attributes)

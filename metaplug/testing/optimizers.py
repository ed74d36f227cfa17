"""Conformance checks for optimizers: outer ones step and keep their state, inner rules
follow the host's InnerRule protocol and adapt.

Outer optimizers are driven in their framework (torch or tensorflow, found from the type of
the backend's tensors); inner rules through the protocol alone, on tensors made by
``backend.tensor``, so one driver serves every backend. No plugin is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

from metaplug.contract.interfaces import InnerRule
from metaplug.plugins.discovery import registry
from metaplug.testing.algorithms import AlgorithmConformance
from metaplug.testing.components import ComponentConformance
from metaplug.testing.harness import cpu_backend

QUADRATIC_START = (3.0, -2.0, 0.5)
QUADRATIC_SCALES = (1.0, 4.0, 0.25)


def quadratic_loss(values: Any, scales: Any) -> Any:
    """``sum(scale * x^2)``: minimum 0 at the origin, differently curved per coordinate."""
    if hasattr(values, "sum"):
        return (scales * values**2).sum()
    return sum(s * v * v for v, s in zip(values, scales, strict=True))


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
"""How to drive an outer optimizer, by the framework of the backend's tensors."""


def framework_of(backend: Any) -> str:
    """The top-level module of the backend's tensors (``torch``, ``tensorflow``, ...)."""
    return type(backend.tensor(np.zeros(1, np.float32))).__module__.partition(".")[0]


def step_inner_rule(backend: Any, rule: Any, lr: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One step of ``rule`` through the host's :class:`~metaplug.contract.interfaces.InnerRule`
    on ``backend``'s tensors, with all-positive gradients: the weights ``(before, after)`` as
    numpy arrays by name. The same driver for every backend."""
    arrays = {
        "features.0.weight": np.array([QUADRATIC_START, QUADRATIC_SCALES], np.float32),
        "head.bias": np.array([1.0], np.float32),
    }
    params = {n: backend.tensor(a) for n, a in arrays.items()}
    grads = {n: backend.tensor(np.ones_like(a)) for n, a in arrays.items()}
    learnables = rule.init(params, lr)
    assert isinstance(learnables, Mapping) and set(learnables) <= set(params), (
        f"init() must return a mapping from (some) parameter names to tensors, got {learnables!r}"
    )
    after = rule.step(params, grads, learnables, lr)
    assert isinstance(after, Mapping) and set(after) == set(params), "step() must return every parameter by name"
    again = rule.step(params, grads, learnables, lr)
    for name, array in arrays.items():
        np.testing.assert_array_equal(np.asarray(params[name]), array, err_msg=f"step() changed its input {name!r}")
        np.testing.assert_array_equal(
            np.asarray(again[name]),
            np.asarray(after[name]),
            err_msg="step() gave two results for the same inputs: it must be pure",
        )
    return arrays, {n: np.asarray(after[n]) for n in arrays}


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
        backend whose tensors are neither torch's nor tensorflow's."""
        framework = framework_of(cpu_backend(str(self.backend)))
        if framework not in MINIMIZERS:
            pytest.skip(f"no quadratic driver for {framework} tensors; override minimize_quadratic()")
        return MINIMIZERS[framework](factory, self.quadratic_lr, self.quadratic_steps)

    def algorithm_checks(self) -> AlgorithmConformance:
        """The algorithm checks of :attr:`reference_algorithm` using this optimizer."""
        return _algorithm_checks(type(self))()

    def test_outer_optimizer_reduces_a_quadratic(self) -> None:
        if self.record().role != "outer":
            pytest.skip("inner rules are checked through an algorithm")
        first, last = self.minimize_quadratic(self.load())
        assert last < 0.1 * first, (
            f"{self.quadratic_steps} steps took the quadratic from {first:.4f} only to {last:.4f}"
        )

    def test_state_round_trips_through_an_algorithm(self) -> None:
        self.algorithm_checks().test_state_round_trips_through_npz("regression")

    def test_training_is_deterministic_under_seed(self) -> None:
        self.algorithm_checks().test_deterministic_under_seed("regression")

    def test_inner_rule_follows_the_host_protocol(self) -> None:
        if self.record().role != "inner":
            pytest.skip("outer optimizers are checked on a quadratic")
        rule = self.load()()
        assert isinstance(rule, InnerRule), "an inner rule implements init() and step() (metaplug's InnerRule)"
        before, after = step_inner_rule(cpu_backend(str(self.backend)), rule, 0.1)
        for name, old in before.items():
            assert after[name].shape == old.shape, f"an inner step changed the shape of {name!r}"
            assert (after[name] < old).all(), f"a step along positive gradients must decrease every entry of {name!r}"

    def test_inner_rule_adapts(self) -> None:
        if self.record().role != "inner":
            pytest.skip("outer optimizers do not adapt to tasks")
        self.algorithm_checks().test_adaptation_lowers_query_loss("regression")


_CHECKS: dict[type, type[AlgorithmConformance]] = {}


def _algorithm_checks(cls: type[OptimizerConformance]) -> type[AlgorithmConformance]:
    """One class per optimizer test class, so that its checks share one scenario run."""
    if cls not in _CHECKS:
        attributes: dict[str, Any] = {"algorithm": cls.reference_algorithm, "backend": cls.backend}
        if registry().get("optimizers", cls.optimizer, cls.backend).role == "outer":
            attributes["optimizer"] = cls.optimizer
        else:
            attributes["hyperparameters"] = {"inner_rule": cls.optimizer}
        name = f"{cls.__name__}With{cls.reference_algorithm.capitalize()}"
        _CHECKS[cls] = type(name, (AlgorithmConformance,), attributes)
    return _CHECKS[cls]

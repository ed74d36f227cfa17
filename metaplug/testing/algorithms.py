"""Conformance checks for algorithms: learning, determinism, state, batch shapes, errors."""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug.interfaces import EpisodeBatch
from metaplug.records import PROBLEMS
from metaplug.testing.components import ComponentConformance
from metaplug.testing.harness import build_algorithm
from metaplug.testing.tasks import easy_sampler


class AlgorithmConformance(ComponentConformance):
    """Subclass with ``algorithm = "name"`` and ``backend = "torch"`` (or another backend).

    The checks build the algorithm with :func:`metaplug.testing.build_algorithm` on
    easy tasks: sinusoids (regression) and :class:`metaplug.testing.PrototypeSampler`
    (classification), on the standard ``mlp``.
    """

    kind: ClassVar[str] = "algorithms"
    algorithm: ClassVar[str] = ""
    """Name of the algorithm under test."""
    hyperparameters: ClassVar[dict[str, Any]] = {}
    """Constructor keyword arguments used by every check (defaults otherwise)."""
    optimizer: ClassVar[str] = "adam"
    """Outer optimizer component (for :attr:`backend`) and its learning rate."""
    lr: ClassVar[float] = 1e-3
    adapt_steps: ClassVar[int | None] = 5
    """Inner steps for the adaptation check (``None``: the algorithm's test-time default)."""
    tasks: ClassVar[int] = 4
    """Episodes per batch in the checks."""
    min_accuracy_gain: ClassVar[float] = 0.2
    """Classification: mean query accuracy after adaptation must exceed chance by this much."""

    @classmethod
    def component_name(cls) -> str:
        return cls.algorithm

    def build(self, problem: str, seed: int = 0, **overrides: Any) -> tuple[Any, Any]:
        """``(algorithm, sampler)`` for ``problem``; the sampler is seeded independently."""
        sampler = easy_sampler(problem, seed=seed)
        options = {**self.hyperparameters, **overrides}
        algorithm = build_algorithm(
            self.algorithm, self.backend, sampler.spec, seed=seed, optimizer=self.optimizer, lr=self.lr, **options
        )
        return algorithm, sampler

    def supported(self, problem: str) -> None:
        if problem not in self.record().problems:
            pytest.skip(f"{self.algorithm} does not declare {problem}")

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_adaptation_lowers_query_loss(self, problem: str) -> None:
        self.supported(problem)
        algorithm, sampler = self.build(problem)
        batch = sampler.sample(8)
        result = algorithm.evaluate(batch, steps=self.adapt_steps)
        loss = float(np.mean(result["loss"]))
        before = result["loss_before"]
        if np.all(np.isfinite(before)):
            reference, what = float(np.mean(before)), "before adaptation"
        else:  # no un-adapted prediction (e.g. metric-based methods): beat the trivial predictor
            reference, what = trivial_loss(batch), "of a trivial predictor"
        assert np.isfinite(loss)
        assert loss < reference, f"query loss {loss:.4f} after adaptation is not below {reference:.4f} {what}"
        if problem == "classification":
            chance = 1.0 / sampler.spec.output_size
            accuracy = float(np.mean(result["accuracy"]))
            assert accuracy >= chance + self.min_accuracy_gain, (
                f"query accuracy {accuracy:.3f} after adaptation is not clearly above chance ({chance:.2f})"
            )

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_deterministic_under_seed(self, problem: str) -> None:
        self.supported(problem)
        runs = []
        for _ in range(2):
            algorithm, sampler = self.build(problem, seed=3)
            metrics = algorithm.meta_train_step(sampler.sample(self.tasks))
            evaluation = algorithm.evaluate(sampler.sample(self.tasks))
            runs.append((metrics, evaluation))
        (m1, e1), (m2, e2) = runs
        assert m1 == m2, f"meta_train_step metrics differ between two runs with one seed: {m1} vs {m2}"
        for key in e1:
            np.testing.assert_array_equal(e1[key], e2[key], err_msg=f"evaluate()[{key!r}] differs under one seed")

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_state_round_trips_through_npz(self, problem: str) -> None:
        self.supported(problem)
        trained, sampler = self.build(problem, seed=0)
        trained.meta_train_step(sampler.sample(self.tasks))
        state = trained.state_dict()
        assert state and all(isinstance(k, str) for k in state)
        assert any(k.startswith("model.") for k in state), "state_dict() has no 'model.*' weights"
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as saved:
            restored_state = {k: saved[k] for k in saved.files}
        restored, _ = self.build(problem, seed=1)  # different initial weights
        restored.load_state_dict(restored_state)

        batch = sampler.sample(self.tasks)
        x, y, query = batch.support_x[0], batch.support_y[0], batch.query_x[0]
        np.testing.assert_array_equal(
            restored.adapt(x, y).predict(query), trained.adapt(x, y).predict(query),
            err_msg="predictions differ after load_state_dict(state_dict())",
        )
        next_batch = sampler.sample(self.tasks)
        assert restored.meta_train_step(next_batch) == trained.meta_train_step(next_batch), (
            "training does not continue identically after load_state_dict() (is the optimizer state saved?)"
        )

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_vectorized_batch_shapes(self, problem: str) -> None:
        self.supported(problem)
        algorithm, sampler = self.build(problem)
        batch = sampler.sample(self.tasks)
        metrics = algorithm.meta_train_step(batch)
        expected = {"loss", "accuracy"} if problem == "classification" else {"loss"}
        assert expected <= set(metrics), f"meta_train_step returned {sorted(metrics)}, needs {sorted(expected)}"
        assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics

        result = algorithm.evaluate(batch)
        keys = {"loss", "loss_before"} | ({"accuracy"} if problem == "classification" else set())
        assert keys <= set(result), f"evaluate returned {sorted(result)}, needs {sorted(keys)}"
        for key, value in result.items():
            assert isinstance(value, np.ndarray) and value.shape == (self.tasks,), (
                f"evaluate()[{key!r}] has shape {np.shape(value)}, expected ({self.tasks},)"
            )
        assert np.all(np.isfinite(result["loss"]))
        if problem == "classification":
            assert np.all((result["accuracy"] >= 0) & (result["accuracy"] <= 1))

        prediction = algorithm.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
        assert isinstance(prediction, np.ndarray)
        assert prediction.shape == (batch.query_x.shape[1], sampler.spec.output_size)

    def test_rejects_unsupported_problems(self) -> None:
        unsupported = [p for p in PROBLEMS if p not in self.record().problems]
        if not unsupported:
            pytest.skip(f"{self.algorithm} supports every problem kind")
        for problem in unsupported:
            with pytest.raises(ConfigError):
                self.build(problem)

    def test_state_uses_the_standard_layout(self) -> None:
        problem = self.record().problems[0]
        algorithm, sampler = self.build(problem)
        weights = {k[len("model."):]: v for k, v in algorithm.state_dict().items() if k.startswith("model.")}
        expected = mlp_layout(sampler.spec.input_shape[0], sampler.spec.output_size)
        assert {k: tuple(v.shape) for k, v in weights.items()} == expected, "model.* does not follow docs/models.md"
        assert all(v.dtype == np.float32 for v in weights.values()), "weights must be float32"


def mlp_layout(inputs: int, outputs: int, hidden: tuple[int, ...] = (40, 40)) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the standard ``mlp`` weights (``docs/models.md``)."""
    layout: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip((inputs, *hidden), hidden)):
        layout[f"features.{i}.weight"], layout[f"features.{i}.bias"] = (fan_out, fan_in), (fan_out,)
    layout["head.weight"], layout["head.bias"] = (outputs, hidden[-1]), (outputs,)
    return layout


def trivial_loss(batch: EpisodeBatch) -> float:
    """Loss of predicting without learning: uniform scores (classification) or the
    support mean (regression)."""
    if batch.problem == "classification":
        ways = int(batch.support_y.max()) + 1
        return float(np.log(ways))
    mean = batch.support_y.mean(axis=1, keepdims=True)
    return float(np.mean((batch.query_y - mean) ** 2))

"""Conformance checks for algorithms: learning (mlp and conv4), determinism, state, batch
shapes, errors, declared options."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest

from metaplug.contract.interfaces import EpisodeBatch
from metaplug.contract.records import PROBLEMS
from metaplug.errors import ConfigError
from metaplug.testing.components import ComponentConformance
from metaplug.testing.harness import build_algorithm
from metaplug.testing.layouts import mlp_layout, model_weights
from metaplug.testing.tasks import GlyphSampler, easy_sampler


@dataclass
class Scenario:
    """What the shared run of :meth:`AlgorithmConformance.scenario` observed."""

    sampler: Any
    batch: EpisodeBatch
    metrics: dict[str, float] = field(default_factory=dict)
    twin_metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    state_copy: dict[str, np.ndarray] = field(default_factory=dict)
    """A copy of ``state`` taken at once (``state`` itself is checked not to change later)."""
    twin_state: dict[str, np.ndarray] = field(default_factory=dict)
    evaluation: dict[str, np.ndarray] = field(default_factory=dict)
    prediction: np.ndarray | None = None
    restored_prediction: np.ndarray | None = None
    next_metrics: dict[str, float] = field(default_factory=dict)
    restored_next_metrics: dict[str, float] = field(default_factory=dict)
    next_state: dict[str, np.ndarray] = field(default_factory=dict)
    restored_next_state: dict[str, np.ndarray] = field(default_factory=dict)


_SCENARIOS: dict[tuple[type, str], Scenario] = {}


class AlgorithmConformance(ComponentConformance):
    """Subclass with ``algorithm = "name"`` and ``backend = "torch"`` (or another backend).

    The checks build the algorithm with :func:`metaplug.testing.build_algorithm` on
    easy tasks: sinusoids (regression) and :class:`metaplug.testing.PrototypeSampler`
    (classification) on the standard ``mlp``; and, for classification, Omniglot-shaped
    5-way 1-shot episodes (:class:`metaplug.testing.GlyphSampler`) on ``conv4``, batch norm
    included.
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
    min_accuracy_gain: ClassVar[float | None] = None
    """Classification: if set, mean query accuracy after adaptation (from the initial
    weights, without meta-training) must exceed chance by this much."""
    conv4_meta_steps: ClassVar[int] = 3
    """conv4 check: meta-training steps, on 2 episodes each, before the evaluation."""
    conv4_accuracy_gain: ClassVar[float] = 0.2
    """conv4 check: query accuracy after adaptation that passes, above chance (0.2)..."""
    conv4_loss_drop: ClassVar[float] = 0.03
    """...or the fraction of the query loss before adaptation that adapting must remove."""

    @classmethod
    def component_name(cls) -> str:
        return cls.algorithm

    def build(self, problem: str, seed: int = 0, **overrides: Any) -> tuple[Any, Any]:
        """``(algorithm, sampler)`` for ``problem``; the sampler is seeded independently."""
        sampler = easy_sampler(problem, seed=seed)
        options = {**self.hyperparameters, **overrides}
        algorithm = build_algorithm(
            self.algorithm, str(self.backend), sampler.spec, seed=seed, optimizer=self.optimizer, lr=self.lr, **options
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
        missing = {"loss", "loss_before"} - set(result)
        assert not missing, f"evaluate() returned no {sorted(missing)} (NaN marks an undefined loss_before)"
        loss = float(np.mean(result["loss"]))
        before = result["loss_before"]
        if np.all(np.isfinite(before)):
            reference, what = float(np.mean(before)), "before adaptation"
        else:  # no un-adapted prediction (e.g. metric-based methods): beat the trivial predictor
            reference, what = trivial_loss(batch), "of a trivial predictor"
        assert np.isfinite(loss)
        assert loss < reference, f"query loss {loss:.4f} after adaptation is not below {reference:.4f} {what}"
        if problem == "classification" and self.min_accuracy_gain is not None:
            chance = 1.0 / sampler.spec.output_size
            accuracy = float(np.mean(result["accuracy"]))
            assert accuracy >= chance + self.min_accuracy_gain, (
                f"query accuracy {accuracy:.3f} after adaptation is not clearly above chance ({chance:.2f})"
            )

    def test_learns_on_omniglot_shaped_tasks_with_conv4(self) -> None:
        """A few meta-steps on conv4, then 4 unseen 5-way 1-shot episodes: the query accuracy
        is clearly above chance, or adapting clearly lowers the query loss."""
        self.supported("classification")
        sampler = GlyphSampler("train", seed=0)
        algorithm = build_algorithm(
            self.algorithm,
            str(self.backend),
            sampler.spec,
            seed=0,
            optimizer=self.optimizer,
            lr=self.lr,
            **self.hyperparameters,
        )
        for _ in range(self.conv4_meta_steps):
            metrics = algorithm.meta_train_step(sampler.sample(2))
            assert all(np.isfinite(v) for v in metrics.values()), f"meta_train_step on conv4 returned {metrics}"
        result = algorithm.evaluate(GlyphSampler("val", seed=0).sample(4), steps=self.adapt_steps)
        loss, before = float(np.mean(result["loss"])), float(np.mean(result["loss_before"]))
        accuracy, chance = float(np.mean(result["accuracy"])), 1.0 / sampler.spec.output_size
        accurate = accuracy >= chance + self.conv4_accuracy_gain
        adapted = np.isfinite(before) and loss <= (1 - self.conv4_loss_drop) * before
        assert accurate or adapted, (
            f"on Omniglot-shaped 5-way 1-shot tasks with conv4, query accuracy {accuracy:.3f} is not clearly above "
            f"chance ({chance:.2f}) and the query loss after adaptation ({loss:.4f}) is not clearly below "
            f"the loss before it ({before:.4f})"
        )

    def build_with_defaults(self) -> None:
        build_algorithm(
            self.algorithm,
            str(self.backend),
            easy_sampler(self.record().problems[0]).spec,
            optimizer=self.optimizer,
            lr=self.lr,
        )

    def scenario(self, problem: str) -> Scenario:
        """One shared run per class and problem (the checks below read it): two algorithms
        built from one seed take a step; the first's state is saved, reloaded into a third
        built from another seed, and both continue."""
        key = (type(self), problem)
        if key not in _SCENARIOS:
            _SCENARIOS[key] = self._run_scenario(problem)
        return _SCENARIOS[key]

    def _run_scenario(self, problem: str) -> Scenario:
        first, sampler = self.build(problem, seed=3)
        twin, _ = self.build(problem, seed=3)
        batches = [sampler.sample(self.tasks) for _ in range(3)]
        run = Scenario(sampler=sampler, batch=batches[1])
        run.metrics = first.meta_train_step(batches[0])
        run.twin_metrics = twin.meta_train_step(batches[0])
        run.state, run.twin_state = first.state_dict(), twin.state_dict()
        run.state_copy = {k: np.array(v, copy=True) for k, v in run.state.items()}
        run.evaluation = first.evaluate(batches[1])

        buffer = io.BytesIO()
        np.savez(buffer, **run.state)  # type: ignore[arg-type]
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as saved:
            loaded = {k: saved[k] for k in saved.files}
        restored, _ = self.build(problem, seed=1)  # different initial weights
        restored.load_state_dict(loaded)
        x, y, query = batches[1].support_x[0], batches[1].support_y[0], batches[1].query_x[0]
        run.prediction = first.adapt(x, y).predict(query)
        run.restored_prediction = restored.adapt(x, y).predict(query)
        run.next_metrics = first.meta_train_step(batches[2])
        run.restored_next_metrics = restored.meta_train_step(batches[2])
        run.next_state = {k: np.array(v, copy=True) for k, v in first.state_dict().items()}
        run.restored_next_state = {k: np.array(v, copy=True) for k, v in restored.state_dict().items()}
        return run

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_deterministic_under_seed(self, problem: str) -> None:
        self.supported(problem)
        run = self.scenario(problem)
        assert run.metrics == run.twin_metrics, (
            f"meta_train_step metrics differ between two runs with one seed: {run.metrics} vs {run.twin_metrics}"
        )
        assert run.state.keys() == run.twin_state.keys()
        for key, value in run.state_copy.items():
            np.testing.assert_array_equal(value, run.twin_state[key], err_msg=f"state {key!r} differs under one seed")

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_state_round_trips_through_npz(self, problem: str) -> None:
        self.supported(problem)
        run = self.scenario(problem)
        assert run.state and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in run.state.items())
        assert any(k.startswith("model.") for k in run.state), "state_dict() has no 'model.*' weights"
        for key, value in run.state_copy.items():
            np.testing.assert_array_equal(
                run.state[key],
                value,
                err_msg=(
                    f"state_dict()[{key!r}] changed when training went on: return copies, not views of live tensors"
                ),
            )
        np.testing.assert_array_equal(
            run.restored_prediction, run.prediction, err_msg="predictions differ after load_state_dict(state_dict())"
        )
        assert run.restored_next_metrics == run.next_metrics, (
            "training does not continue identically after load_state_dict()"
        )
        assert run.restored_next_state.keys() == run.next_state.keys()
        for key, value in run.next_state.items():
            np.testing.assert_array_equal(
                run.restored_next_state[key],
                value,
                err_msg=(
                    f"after one more step, {key!r} differs between the original and the restored algorithm "
                    f"(is all optimizer state saved?)"
                ),
            )

    @pytest.mark.parametrize("problem", PROBLEMS)
    def test_vectorized_batch_shapes(self, problem: str) -> None:
        self.supported(problem)
        run = self.scenario(problem)
        expected = {"loss", "accuracy"} if problem == "classification" else {"loss"}
        assert expected <= set(run.metrics), f"meta_train_step returned {sorted(run.metrics)}, needs {sorted(expected)}"
        assert all(isinstance(v, float) and np.isfinite(v) for v in run.metrics.values()), run.metrics

        keys = {"loss", "loss_before"} | ({"accuracy"} if problem == "classification" else set())
        assert keys <= set(run.evaluation), f"evaluate returned {sorted(run.evaluation)}, needs {sorted(keys)}"
        for key, value in run.evaluation.items():
            assert isinstance(value, np.ndarray) and value.shape == (self.tasks,), (
                f"evaluate()[{key!r}] has shape {np.shape(value)}, expected ({self.tasks},)"
            )
        assert np.all(np.isfinite(run.evaluation["loss"]))
        if problem == "classification":
            assert np.all((run.evaluation["accuracy"] >= 0) & (run.evaluation["accuracy"] <= 1))
        assert isinstance(run.prediction, np.ndarray)
        assert run.prediction.shape == (run.batch.query_x.shape[1], run.sampler.spec.output_size)

    def test_rejects_unsupported_problems(self) -> None:
        unsupported = [p for p in PROBLEMS if p not in self.record().problems]
        if not unsupported:
            pytest.skip(f"{self.algorithm} supports every problem kind")
        for problem in unsupported:
            with pytest.raises(ConfigError):
                self.build(problem)

    def test_state_uses_the_standard_layout(self) -> None:
        run = self.scenario(self.record().problems[0])
        state = run.state_copy
        expected = mlp_layout(run.sampler.spec.input_shape[0], run.sampler.spec.output_size)
        assert model_weights(state) == expected, "model.* does not follow docs/models.md"
        assert all(v.dtype == np.float32 for k, v in state.items() if k.startswith("model.")), "weights must be float32"


def trivial_loss(batch: EpisodeBatch) -> float:
    """Loss of predicting without learning: uniform scores (classification) or the
    support mean (regression)."""
    if batch.problem == "classification":
        ways = int(batch.support_y.max()) + 1
        return float(np.log(ways))
    mean = batch.support_y.mean(axis=1, keepdims=True)
    return float(np.mean((batch.query_y - mean) ** 2))

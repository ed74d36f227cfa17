"""Conformance checks for models: outputs of the spec's shape, a weight layout that round-trips
through numpy, seeding, and training and evaluation under the algorithms that split a model
into ``features`` and ``head``."""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import pytest

from metaplug.contract.interfaces import EpisodeBatch, TaskSpec
from metaplug.errors import ConfigError
from metaplug.tasks import LabelledArrays, NWayKShot
from metaplug.testing.components import ComponentConformance
from metaplug.testing.harness import build_algorithm
from metaplug.testing.layouts import model_weights

STANDARD_ALGORITHMS = ("maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "finetune")


class ShapedSampler:
    """Episodes of any input shape: 3-way 2-shot classification over noisy copies of one
    random pattern per class, or regression ``y = A sin(mean(x) - phase)`` (``output_size``
    equal outputs per example)."""

    def __init__(self, problem: str, input_shape: tuple[int, ...], output_size: int, model: str, seed: int) -> None:
        self.problem, self.input_shape, self.output_size = problem, tuple(input_shape), output_size
        self.rng = np.random.default_rng(seed)
        classes = 4 * output_size
        self.spec = TaskSpec(
            problem, self.input_shape, output_size, classes if problem == "classification" else None, model
        )
        if problem == "classification":
            data = np.random.default_rng(1234)
            patterns = data.uniform(size=(classes, *self.input_shape))
            x = patterns.repeat(6, axis=0) + 0.3 * data.normal(size=(classes * 6, *self.input_shape))
            dataset = LabelledArrays(x.astype(np.float32), np.arange(classes).repeat(6))
            self.episodes = NWayKShot(dataset, output_size, 2, 2, self.rng)

    def sample(self, num_tasks: int) -> EpisodeBatch:
        if self.problem == "classification":
            return self.episodes.sample(num_tasks)
        x = self.rng.uniform(-2, 2, size=(num_tasks, 10, *self.input_shape)).astype(np.float32)
        amplitude = self.rng.uniform(0.5, 2, size=(num_tasks, 1, 1))
        phase = self.rng.uniform(0, np.pi, size=(num_tasks, 1, 1))
        mean = x.reshape(num_tasks, 10, -1).mean(axis=-1, keepdims=True)
        y = np.repeat(amplitude * np.sin(mean - phase), self.output_size, axis=-1).astype(np.float32)
        return EpisodeBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:], "regression")


class ModelConformance(ComponentConformance):
    """Subclass with ``model = "name"`` and ``backend = "torch"`` (or another backend that
    registers the model); set :attr:`options` to keep the model small.

    The checks build the model through the registry (as ``metaplug train --model NAME`` does)
    inside algorithms: its predictions before adaptation are the model's outputs.
    """

    kind: ClassVar[str] = "models"
    model: ClassVar[str] = ""
    """Name of the model under test."""
    options: ClassVar[dict[str, Any]] = {}
    """The model's options in every check (the ``[model]`` table), e.g. small widths."""
    problem: ClassVar[str] = "classification"
    """The tasks of the checks: ``"classification"`` or ``"regression"``."""
    input_shape: ClassVar[tuple[int, ...]] = (1, 28, 28)
    """One example's shape (images channels first): Omniglot's by default."""
    output_size: ClassVar[int] = 3
    """Ways (classification) or outputs per example (regression)."""
    layout: ClassVar[dict[str, tuple[int, ...]] | None] = None
    """If set: the names and shapes of the model's weights in a state dict, without ``model.``."""
    rejected_input_shape: ClassVar[tuple[int, ...] | None] = None
    """If set: an input shape the model cannot take (building must raise a one-line ConfigError)."""
    algorithms: ClassVar[tuple[str, ...]] = ("maml", "anil", "protonet", "finetune")
    """Standard algorithms trained a step and evaluated on the model (ProtoNets only for
    classification): by default MAML and the three that split the model into ``features``
    and ``head`` (ANIL adapts the head, ProtoNets embed with the features, fine-tuning
    replaces the head)."""
    tasks: ClassVar[int] = 2
    """Episodes per batch in the checks."""

    @classmethod
    def component_name(cls) -> str:
        return cls.model

    def sampler(self, seed: int = 0) -> ShapedSampler:
        return ShapedSampler(self.problem, self.input_shape, self.output_size, self.model, seed)

    def build(self, algorithm: str = "maml", seed: int = 0, **options: Any) -> Any:
        """``algorithm`` on this model (built with :attr:`options` after seeding with ``seed``)."""
        return build_algorithm(
            algorithm,
            str(self.backend),
            self.sampler().spec,
            seed=seed,
            model=self.model,
            model_options=self.options,
            **options,
        )

    def outputs(self, algorithm: Any, batch: EpisodeBatch, examples: int | None = None) -> np.ndarray:
        """The model's outputs on the first task's queries (MAML adapted with no step)."""
        query = batch.query_x[0] if examples is None else batch.query_x[0][:examples]
        return np.asarray(algorithm.adapt(batch.support_x[0], batch.support_y[0], steps=0).predict(query))

    def build_with_defaults(self) -> None:
        build_algorithm("maml", str(self.backend), self.sampler().spec, model=self.model)

    def test_outputs_have_the_shape_of_the_spec(self) -> None:
        batch = self.sampler().sample(self.tasks)
        algorithm = self.build()
        for examples in (None, 1):
            out = self.outputs(algorithm, batch, examples)
            rows = batch.query_x.shape[1] if examples is None else examples
            assert out.shape == (rows, self.output_size), (
                f"{self.model} gives outputs of shape {out.shape} for {rows} examples of shape {self.input_shape}, "
                f"expected ({rows}, {self.output_size})"
            )
            assert np.all(np.isfinite(out)), f"{self.model} gives non-finite outputs"

    def test_weights_round_trip_through_numpy(self) -> None:
        batch = self.sampler().sample(self.tasks)
        original, twin, other = self.build(seed=0), self.build(seed=0), self.build(seed=1)
        state = {k: v for k, v in original.state_dict().items() if k.startswith("model.")}
        assert state, "state_dict() has no 'model.*' weights"
        for name, value in state.items():
            assert isinstance(value, np.ndarray) and value.dtype.kind == "f", f"{name} is not a float numpy array"
            assert name.startswith(("model.features.", "model.head.")), (
                f"{name}: a model's weights are named features.* and head.* (docs/models.md)"
            )
        twin_state = twin.state_dict()
        for name, value in state.items():
            np.testing.assert_array_equal(
                twin_state[name], value, err_msg=f"{name} differs between builds with one seed"
            )
        assert any(not np.array_equal(other.state_dict()[n], v) for n, v in state.items()), (
            "the model's weights do not depend on the backend's seed"
        )
        buffer = io.BytesIO()
        np.savez(buffer, **original.state_dict())
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as saved:
            other.load_state_dict({k: saved[k] for k in saved.files})
        for name, value in state.items():
            np.testing.assert_array_equal(other.state_dict()[name], value, err_msg=f"{name} after load_state_dict")
        np.testing.assert_array_equal(
            self.outputs(other, batch), self.outputs(original, batch), err_msg="outputs differ after a numpy round trip"
        )

    def test_state_follows_the_declared_layout(self) -> None:
        if self.layout is None:
            pytest.skip("no layout declared (set `layout` to check the weights' names and shapes)")
        assert model_weights(self.build().state_dict()) == self.layout

    @pytest.mark.parametrize("name", STANDARD_ALGORITHMS)
    def test_trains_and_evaluates_under_the_algorithms(self, name: str) -> None:
        if name not in self.algorithms:
            pytest.skip(f"{name} is not in `algorithms`")
        if name == "protonet" and self.problem != "classification":
            pytest.skip("protonet classifies")
        sampler = self.sampler()
        algorithm = self.build(name)
        metrics = algorithm.meta_train_step(sampler.sample(self.tasks))
        assert metrics and all(np.isfinite(v) for v in metrics.values()), f"{name}: meta_train_step gave {metrics}"
        test = sampler.sample(self.tasks)
        result = algorithm.evaluate(test, steps=2)
        for key in ("loss", "accuracy") if self.problem == "classification" else ("loss",):
            assert np.shape(result[key]) == (self.tasks,) and np.all(np.isfinite(result[key])), (
                f"{name}: evaluate gave {key} = {result[key]}"
            )
        predictions = np.asarray(
            algorithm.adapt(test.support_x[0], test.support_y[0], steps=2).predict(test.query_x[0])
        )
        assert predictions.shape == (test.query_x.shape[1], self.output_size), f"{name}: adapted predictions"
        assert np.all(np.isfinite(predictions)), f"{name}: adapted predictions are not finite"

    def test_rejects_inputs_it_cannot_take_in_one_line(self) -> None:
        if self.rejected_input_shape is None:
            pytest.skip("no rejected_input_shape declared")
        spec = TaskSpec(self.problem, self.rejected_input_shape, self.output_size, 4 * self.output_size, self.model)
        with pytest.raises(ConfigError) as caught:
            build_algorithm("maml", str(self.backend), spec, model=self.model, model_options=self.options)
        assert "\n" not in str(caught.value), "the error is more than one line"

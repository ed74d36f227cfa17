"""Conformance checks for task samplers: spec, shapes, dtypes, labels, reproducibility, state."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest

from metaplug.contract.interfaces import EpisodeBatch, TaskSpec
from metaplug.errors import ConfigError
from metaplug.testing.components import ComponentConformance


class TaskSamplerConformance(ComponentConformance):
    """Subclass with ``sampler = "name"``; ``options`` are constructor options for a small setting."""

    kind: ClassVar[str] = "task-samplers"
    sampler: ClassVar[str] = ""
    """Name of the task sampler under test."""
    options: ClassVar[dict[str, Any]] = {}
    """Keyword options passed to every sampler the checks build (besides ``split`` and ``seed``)."""
    tasks: ClassVar[int] = 3
    """Episodes per batch in the checks."""

    @classmethod
    def component_name(cls) -> str:
        return cls.sampler

    def make(self, split: str = "train", seed: int = 0) -> Any:
        return self.load()(split=split, seed=seed, **self.options)

    def test_spec_matches_the_record(self) -> None:
        spec = self.make().spec
        assert isinstance(spec, TaskSpec)
        assert (spec.problem,) == tuple(self.record().problems), "the record must declare exactly spec.problem"
        assert spec.input_shape and all(isinstance(n, int) and n > 0 for n in spec.input_shape)
        assert isinstance(spec.output_size, int) and spec.output_size > 0
        if spec.problem == "classification":
            assert spec.output_size >= 2, "classification needs at least two ways"
            assert spec.num_classes is None or spec.num_classes >= spec.output_size

    def test_episodes_have_documented_shapes_and_dtypes(self) -> None:
        sampler = self.make()
        spec = sampler.spec
        batch = sampler.sample(self.tasks)
        assert isinstance(batch, EpisodeBatch) and batch.problem == spec.problem
        t, s = batch.support_x.shape[:2]
        q = batch.query_x.shape[1]
        assert t == self.tasks and s > 0 and q > 0
        assert batch.support_x.shape == (t, s, *spec.input_shape) and batch.support_x.dtype == np.float32
        assert batch.query_x.shape == (t, q, *spec.input_shape) and batch.query_x.dtype == np.float32
        for name in ("support_x", "support_y", "query_x", "query_y"):
            assert np.all(np.isfinite(getattr(batch, name))), f"{name} has non-finite values"
        if spec.problem == "classification":
            assert batch.support_y.shape == (t, s) and batch.query_y.shape == (t, q)
            assert batch.support_y.dtype == np.int64 and batch.query_y.dtype == np.int64
            for y in (batch.support_y, batch.query_y):
                assert y.min() >= 0 and y.max() < spec.output_size, "labels must lie in 0..ways-1"
            for task in batch.support_y:
                assert set(task.tolist()) == set(range(spec.output_size)), "every way needs support examples"
            if batch.classes is not None:
                assert batch.classes.shape == (t, spec.output_size)
        else:
            assert batch.support_y.shape == (t, s, spec.output_size) and batch.support_y.dtype == np.float32
            assert batch.query_y.shape == (t, q, spec.output_size) and batch.query_y.dtype == np.float32
        for key, value in batch.params.items():
            assert np.shape(value) == (t,), f"params[{key!r}] must have one value per task"

    def test_reproducible_under_a_seed(self) -> None:
        first, second = self.make(seed=5).sample(self.tasks), self.make(seed=5).sample(self.tasks)
        assert_same_episodes(first, second)
        other = self.make(seed=6).sample(self.tasks)
        assert not np.array_equal(first.support_x, other.support_x), "a different seed gave the same episodes"
        val = self.make(split="val", seed=5).sample(self.tasks)
        assert not np.array_equal(first.support_x, val.support_x), "splits 'train' and 'val' gave the same episodes"

    def test_state_round_trips_through_json(self) -> None:
        sampler = self.make(seed=2)
        sampler.sample(self.tasks)
        state = json.loads(json.dumps(sampler.state_dict()))
        expected = sampler.sample(self.tasks)
        restored = self.make(seed=9)
        restored.load_state_dict(state)
        assert_same_episodes(restored.sample(self.tasks), expected)

    def test_rejects_bad_options_clearly(self) -> None:
        with pytest.raises(ConfigError):
            self.make(split="no-such-split")
        with pytest.raises(ConfigError):
            self.make().sample(0)


def assert_same_episodes(a: EpisodeBatch, b: EpisodeBatch) -> None:
    """Fail unless two batches hold exactly the same episodes."""
    for name in ("support_x", "support_y", "query_x", "query_y"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{name} differs")
    if a.classes is not None or b.classes is not None:
        np.testing.assert_array_equal(a.classes, b.classes, err_msg="classes differ")

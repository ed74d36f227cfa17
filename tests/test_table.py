"""The table samplers: meta-regression and classification over a CSV or .npz."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from own_data import make_classes_csv, make_regression_csv

from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks.table import TableClassesSampler, TableSampler
from metaplug.testing.samplers import TaskSamplerConformance


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tables")
    make_regression_csv(folder / "sites.csv")
    make_classes_csv(folder / "species.csv")
    return folder


class TestTableConformance(TaskSamplerConformance):
    sampler = "table"
    options: ClassVar[dict[str, Any]] = {"shots": 5, "queries": 5}

    folder: ClassVar[Path]

    @pytest.fixture(autouse=True)
    def _tables(self, tables):
        type(self).folder = tables

    def make(self, split="train", seed=0):
        return self.load()(split=split, seed=seed, path=str(self.folder / "sites.csv"), **self.options)


class TestTableClassesConformance(TaskSamplerConformance):
    sampler = "table-classes"
    options: ClassVar[dict[str, Any]] = {
        "ways": 2,
        "shots": 2,
        "queries": 3,
        "class_column": "species",
        "split_ratio": [0.6, 0.2, 0.2],
    }

    folder: ClassVar[Path]

    @pytest.fixture(autouse=True)
    def _tables(self, tables):
        type(self).folder = tables

    def make(self, split="train", seed=0):
        return self.load()(split=split, seed=seed, path=str(self.folder / "species.csv"), **self.options)


def test_regression_episodes_come_from_one_task_each(tmp_path):
    path = make_regression_csv(tmp_path / "sites.csv")
    sampler = TableSampler("train", 0, path=str(path), shots=4, queries=6, standardize=False)
    assert sampler.spec.input_shape == (2,) and sampler.spec.output_size == 1 and sampler.feature_names == ["x1", "x2"]
    batch = sampler.sample(3)
    assert batch.support_x.shape == (3, 4, 2) and batch.query_y.shape == (3, 6, 1)
    for t, task in enumerate(batch.params["task"]):
        rows = sampler.members[task]
        x = np.concatenate([batch.support_x[t], batch.query_x[t]])
        assert len({tuple(r) for r in x}) == 10, "support and query rows overlap"
        assert {tuple(r) for r in x} <= {tuple(r) for r in sampler.x[rows]}


def test_standardisation_uses_the_training_split_only(tmp_path):
    path = make_regression_csv(tmp_path / "sites.csv")
    train = TableSampler("train", 0, path=str(path))
    test = TableSampler("test", 0, path=str(path))
    rows = np.concatenate(train.members)
    np.testing.assert_allclose(train.x[rows].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.x[rows].std(axis=0), 1, atol=1e-4)
    np.testing.assert_array_equal(train.x, test.x)  # one transform, from the training rows, for every split
    assert not set(train.task_names) & set(test.task_names)
    raw = TableSampler("train", 0, path=str(path), standardize=False)
    assert abs(float(raw.x[:, 0].mean()) - 100) < 5
    np.testing.assert_allclose(test.prepare_features(raw.x), train.x, atol=2e-5)  # what metaplug predict applies
    np.testing.assert_array_equal(raw.prepare_features(raw.x), raw.x)


def test_npz_and_split_column(tmp_path):
    rng = np.random.default_rng(0)
    task = np.repeat(np.array(["a", "b", "c", "d"]), 6)
    split = np.repeat(np.array(["train", "train", "val", "test"]), 6)
    np.savez(tmp_path / "t.npz", task=task, split=split, u=rng.normal(size=24), y=rng.normal(size=24))
    sampler = TableSampler("val", 0, path=str(tmp_path / "t.npz"), split_column="split", shots=2, queries=3)
    assert sampler.task_names == ["c"] and sampler.feature_names == ["u"]


def test_classification_episodes(tmp_path):
    path = make_classes_csv(tmp_path / "species.csv", classes=10)
    sampler = TableClassesSampler("train", 0, path=str(path), class_column="species", ways=3, shots=2, queries=4)
    assert sampler.spec.input_shape == (4,) and sampler.spec.num_classes == 6 and sampler.spec.default_model == "mlp"
    batch = sampler.sample(2)
    assert batch.support_x.shape == (2, 6, 4) and batch.query_y.shape == (2, 12)


@pytest.mark.parametrize(
    "content, options, message",
    [
        (
            "task,x,y\na,1,2\n",
            {"task_column": "site"},
            "has no column 'site' (tasks.task_column); its columns: task, x, y",
        ),
        ("task,x,y\na,1,2\na,oops,3\n", {}, "t.csv, line 3, column 'x': 'oops' is not a number"),
        ("task,x,y\na,1,2\na,1,\n", {}, "line 3, column 'y': '' is not a number"),
        ("task,x,y\na,1,2\na,1\n", {}, "line 3: 2 values, the header names 3 columns"),
        ("task,x,y\n" + "a,1,2\n" * 12 + "b,1,2\n" * 3, {}, "task 'b' (task in"),
        ("", {}, "is empty"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path, content, options, message):
    (tmp_path / "t.csv").write_text(content)
    settings = {"shots": 2, "queries": 2, "split_ratio": [1, 0, 0], **options}
    with pytest.raises(DatasetError) as error:
        TableSampler("train", 0, path=str(tmp_path / "t.csv"), **settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="needs tasks.path"):
        TableSampler("train", 0)
    with pytest.raises(DatasetError, match="not found"):
        TableSampler("train", 0, path=str(tmp_path / "none.csv"))
    path = make_classes_csv(tmp_path / "species.csv", classes=5)
    with pytest.raises(ConfigError, match="ways=4 exceeds the 1 classes in the val split"):
        TableClassesSampler("val", 0, path=str(path), class_column="species", ways=4, shots=1, queries=1)

"""The algorithm workloads of ``metaplug bench``: each named Omniglot workload carries its
algorithm's published Omniglot settings and runs a meta-step on every backend."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from metaplug.experiment import bench

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
EVALUATION_ONLY = {"name", "test_inner_steps", "transductive"}
"""Options of a configuration's ``[algorithm]`` that do not change a meta-training step."""

PUBLISHED = {
    "omniglot-maml": "maml-omniglot-5w1s.toml",
    "omniglot-mamlpp": "mamlpp-omniglot-5w1s.toml",
    "omniglot-relationnet": "relationnet-omniglot-5w1s.toml",
    "omniglot-r2d2": "r2d2-omniglot-5w1s.toml",
    "omniglot-metalstm": "metalstm-omniglot-5w1s.toml",
}
OMNIGLOT = [name for name in bench.NAMED if name.startswith("omniglot-")]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_workload_trains_as_its_published_omniglot_configuration(name):
    published = tomllib.loads((BENCHMARKS / PUBLISHED[name]).read_text())["algorithm"]
    w = bench.workload(name)
    assert w.algorithm == published["name"] and not w.generic
    assert w.hyperparameters == {k: v for k, v in published.items() if k not in EVALUATION_ONLY}


def test_each_new_algorithm_is_measured_on_its_named_workload_only():
    both = ("regression", "classification")
    for algorithm in ("mamlpp", "relationnet", "r2d2", "metalstm"):
        assert [w.name for w in bench.workloads_for(algorithm, both)] == [f"omniglot-{algorithm}"]
    assert bench.workload("sinusoid-mamlpp").generic  # still there when named


def test_inner_rule_variants_are_maml_with_another_rule_and_run_only_when_named():
    maml = bench.workload("omniglot-maml").hyperparameters
    for rule in ("inner-adam", "inner-rmsprop"):
        variant = bench.workload(f"omniglot-maml-{rule}")
        assert variant.algorithm == "maml" and variant.shape.name == "omniglot"
        assert variant.hyperparameters == {**maml, "inner_rule": rule, "inner_lr": 0.01}
    assert [w.name for w in bench.workloads_for("maml", ("classification",))] == ["sinusoid-maml", "omniglot-maml"]
    pairs = bench.plan(backend="torch", workload_name="omniglot-maml-inner-adam")
    assert [(p.backend, p.workload.algorithm) for p in pairs] == [("torch", "maml")]


@pytest.fixture
def small_omniglot(monkeypatch, tmp_path):
    """The omniglot shape at 2 tasks of 2 queries per class, on random images, without the
    matrix-product rate measurement of the compute floor."""
    shape = bench.SHAPES["omniglot"]
    monkeypatch.setattr(bench, "compute_floor", lambda w, backend: {})
    options = {**shape.task_options, "queries": 2}
    monkeypatch.setitem(bench.SHAPES, "omniglot", dataclasses.replace(shape, meta_batch_size=2, task_options=options))
    monkeypatch.setenv("METAPLUG_DATA_DIR", str(tmp_path))


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_every_named_omniglot_workload_runs_a_meta_step(backend, small_omniglot):
    pytest.importorskip(f"metaplug_{backend}")
    for name in OMNIGLOT:
        row = bench.measure(backend, name, steps=1, warmup=0)
        assert (row["workload"], row["algorithm"]) == (name, bench.workload(name).algorithm)
        assert row["median_ms"] > 0 and row["data"] == "random (Omniglot not found)"

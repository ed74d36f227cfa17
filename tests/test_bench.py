"""``metaplug bench`` plumbing (no timings are asserted): workloads, pairs, child processes, rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from doubles import DOUBLES

from metaplug.errors import ConfigError
from metaplug.experiment import bench


def metaplug(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(DOUBLES), **env}
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=environment)


def test_named_workloads_match_the_issue():
    maml = bench.workload("omniglot-maml")
    assert maml.shape.meta_batch_size == 32 and maml.shape.model == "conv4"
    assert maml.shape.task_options == {"ways": 5, "shots": 1, "queries": 15}
    assert maml.hyperparameters == {"inner_lr": 0.4, "inner_steps": 1, "first_order": False}
    sinusoid = bench.workload("sinusoid-maml")
    assert sinusoid.shape.meta_batch_size == 25 and sinusoid.shape.task_options == {"shots": 10, "queries": 10}
    assert [w.name for w in bench.workloads_for("maml", ("regression", "classification"))] == [
        "sinusoid-maml",
        "omniglot-maml",
    ]
    assert [w.name for w in bench.workloads_for("protonet", ("classification",))] == ["omniglot-protonet"]
    assert [w.name for w in bench.workloads_for("reptile", ("regression", "classification"))] == [
        "sinusoid-reptile",
        "omniglot-reptile",
    ]
    with pytest.raises(ConfigError, match="Did you mean 'omniglot-maml'"):
        bench.workload("omniglott-maml")


def test_conv4_flop_count_is_the_textbook_sum():
    per_image = 2 * 9 * 64 * (28 * 28 * 1 + 14 * 14 * 64 + 7 * 7 * 64 + 3 * 3 * 64) + 2 * 64 * 5
    assert bench.conv4_forward_flops((1, 28, 28), ways=5) == per_image
    # forward + backward over 32 tasks x 5 ways x 16 images: about 151 GFLOP
    assert bench.nominal_gflop(bench.workload("omniglot-maml")) == pytest.approx(150.8, abs=0.1)
    assert bench.nominal_gflop(bench.workload("sinusoid-maml")) is None


def test_plan_covers_every_installed_pair_and_filters(double):
    pairs = bench.plan(backend="numpy")
    assert [(p.backend, p.workload.name) for p in pairs] == [("numpy", "sinusoid-linear-maml")]
    every = bench.plan()
    assert ("numpy", "sinusoid-linear-maml") in [(p.backend, p.workload.name) for p in every]
    with pytest.raises(ConfigError, match="does not support classification"):
        bench.plan(backend="numpy", workload_name="omniglot-linear-maml")
    with pytest.raises(ConfigError, match="runs 'maml', not 'linear-maml'"):
        bench.plan(algorithm="linear-maml", workload_name="omniglot-maml")


def test_random_omniglot_has_the_workload_shapes(double, tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUG_DATA_DIR", str(tmp_path))  # no Omniglot there
    batches, spec, source = bench.episodes(bench.workload("omniglot-protonet"), 2)
    assert source == "random (Omniglot not found)" and len(batches) == 2
    batch = batches[0]
    assert batch.support_x.shape == (32, 5, 1, 28, 28) and batch.query_x.shape == (32, 75, 1, 28, 28)
    assert batch.support_y.dtype == np.int64 and batch.query_y[0].tolist() == sorted(batch.query_y[0].tolist())
    assert spec.output_size == 5 and spec.input_shape == (1, 28, 28)
    again, _, _ = bench.episodes(bench.workload("omniglot-protonet"), 2)
    assert np.array_equal(again[1].query_x, batches[1].query_x)  # seeded


def test_resnet12_workloads_run_only_when_named():
    maml = bench.workload("miniimagenet-maml")
    assert maml.shape.model == "resnet12" and maml.shape.meta_batch_size == 2
    assert maml.hyperparameters == {"inner_lr": 0.01, "inner_steps": 1, "first_order": False}
    assert bench.workload("miniimagenet-protonet").algorithm == "protonet"
    for algorithm in ("maml", "protonet", "reptile"):
        names = [w.name for w in bench.workloads_for(algorithm, ("regression", "classification"))]
        assert not any(n.startswith("miniimagenet-") for n in names)
    with pytest.raises(ConfigError, match="the miniimagenet workloads: miniimagenet-maml, miniimagenet-protonet"):
        bench.workload("miniimagenet-reptile")
    batches, spec, source = bench.episodes(maml, 2)
    assert source == "random (miniimagenet shape; no sampler)" and len(batches) == 2
    assert batches[0].support_x.shape == (2, 5, 3, 84, 84) and batches[0].query_x.shape == (2, 75, 3, 84, 84)
    assert spec.input_shape == (3, 84, 84) and spec.default_model == "resnet12"


def test_bench_json_rows_from_child_processes():
    done = metaplug("bench", "--backend", "numpy", "--steps", "2", "--warmup", "1", "--json", "--reference")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["backend"] == "numpy" and row["workload"] == "sinusoid-linear-maml" and row["steps"] == 2
    assert row["median_ms"] > 0 and row["tasks_per_s"] > 0 and row["peak_rss_mb"] > 1
    assert row["data"] == "sinusoid (generated)"
    assert row["reference"] == "not measured: linear-maml (numpy) has no batching option"


def test_bench_table_and_bad_names():
    done = metaplug("bench", "--backend", "numpy", "--steps", "2", "--warmup", "0")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:6] == ["backend", "algorithm", "workload", "median_ms", "tasks_per_s", "peak_rss_mb"]
    for args, fragment in [
        (["--backend", "nmupy"], "Did you mean 'numpy'?"),
        (["--workload", "sinusiod-maml"], "unknown workload"),
        (["--steps", "0"], "--steps"),
    ]:
        bad = metaplug("bench", *args)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and fragment in bad.stderr

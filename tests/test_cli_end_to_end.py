"""The experiment commands end to end on the real backends, at tiny sizes (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from doubles import DOUBLES

from metaplug.experiment import checkpoint as checkpoints

pytest.importorskip("metaplug_torch")

TINY = ["--val-every", "10", "--val-tasks", "10", "--test-tasks", "20", "--log-every", "5"]


def metaplug(*args: str, check: bool = True, doubles: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small models: threads only contend on shared CPUs
    if doubles:
        env["PYTHONPATH"] = str(DOUBLES)
    done = subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("e2e") / "default"
    done = metaplug("train", "--iterations", "30", *TINY, "--checkpoint-every", "10", "--run-dir", str(run))
    assert "held-out test tasks (20 episodes, 1 inner step): MSE after adaptation" in done.stdout
    return run


def test_default_job_is_sinusoid_maml_on_torch(default_run):
    saved = (default_run / "config.toml").read_text()
    assert 'backend = "torch"' in saved and 'name = "maml"' in saved and 'name = "sinusoid"' in saved
    results = json.loads((default_run / "results.json").read_text())
    assert results["step"] == 30 and results["test"]["loss"]["n"] == 20
    rows = [json.loads(line) for line in (default_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [10, 20, 30]


def test_resume_matches_the_uninterrupted_run_bit_for_bit(default_run, tmp_path):
    part = tmp_path / "part"
    metaplug("train", "--iterations", "17", *TINY, "--checkpoint-every", "10", "--run-dir", str(part), "--quiet")
    metaplug("train", "--resume", str(part), "--iterations", "30", "--quiet")
    straight, resumed = (checkpoints.load(d / "checkpoint") for d in (default_run, part))
    assert straight.step == resumed.step == 30
    assert sorted(straight.arrays) == sorted(resumed.arrays) and any(
        k.startswith("optimizer.") for k in straight.arrays
    )
    for name, value in straight.arrays.items():
        assert np.array_equal(value, resumed.arrays[name]), name
    best_straight, best_resumed = (checkpoints.load(d / "best") for d in (default_run, part))
    assert (
        best_straight.step == best_resumed.step
        and best_straight.record["validation"] == best_resumed.record["validation"]
    )
    for name, value in best_straight.arrays.items():
        assert np.array_equal(value, best_resumed.arrays[name]), f"best: {name}"


def test_evaluate_and_plot_a_torch_run(default_run):
    result = json.loads(metaplug("evaluate", str(default_run), "--episodes", "50", "--steps", "5", "--json").stdout)
    assert result["backend"] == "torch" and result["loss"]["n"] == 50 and result["loss_before"]["ci95"] > 0
    pytest.importorskip("matplotlib")
    figures = metaplug("plot", str(default_run)).stdout.split()
    assert [Path(f).name for f in figures] == ["learning_curves.png", "sinusoid_adaptation.png"]


def test_omniglot_protonet_and_maml_from_the_local_data(tmp_path):
    if not (Path(os.environ.get("METAPLUG_DATA_DIR", "/nonexistent")) / "omniglot").is_dir():
        pytest.skip("no local Omniglot")
    for algorithm, extra in (("protonet", []), ("maml", ["--inner-lr", "0.4"])):
        done = metaplug(
            "train",
            "--tasks",
            "omniglot",
            "--model",
            "conv4",
            "--set",
            "model.filters=16",
            "--algorithm",
            algorithm,
            "--iterations",
            "2",
            "--meta-batch-size",
            "2",
            "--queries",
            "2",
            "--val-every",
            "0",
            "--test-tasks",
            "4",
            *extra,
            "--run-dir",
            str(tmp_path / algorithm),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "held-out test tasks (4 episodes" in done.stdout and "accuracy" in done.stdout
        saved = (tmp_path / algorithm / "config.toml").read_text()
        assert 'name = "conv4"' in saved and "filters = 16" in saved and 'pooling = "max"' in saved


def test_bench_measures_torch_in_a_child_process_with_reference_speedup():
    done = metaplug(
        "bench",
        "--backend",
        "torch",
        "--workload",
        "sinusoid-maml",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        "--reference",
    )
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["backend"] == "torch" and row["workload"] == "sinusoid-maml" and row["steps"] == 2
    assert row["batching"] == "auto" and row["data"] == "sinusoid (generated)"
    assert row["median_ms"] > 0 and row["peak_rss_mb"] > 50 and row["reference_median_ms"] > 0
    assert row["speedup"] == pytest.approx(row["reference_median_ms"] / row["median_ms"], rel=0.01)


def test_tensorflow_runs_the_same_job(tmp_path):
    pytest.importorskip("metaplug_tensorflow")
    done = metaplug(
        "train",
        "--backend",
        "tensorflow",
        "--iterations",
        "3",
        "--val-every",
        "0",
        "--test-tasks",
        "5",
        "--run-dir",
        str(tmp_path / "tf"),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "held-out test tasks (5 episodes" in done.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--algorithm", "protonet"], ["'protonet' does not support regression tasks ('sinusoid')"]),
        (["--algorithm", "mmal"], ["unknown algorithm 'mmal'", "Did you mean 'maml'?"]),
        (["--optimizer", "inner-sgd"], ["inner-loop rule"]),
        (["--set", "algorithm.batching=fast"], ["batching"]),
        (["--tasks", "omniglot", "--algorithm", "protonet", "--ways", "0"], ["tasks.ways must be at least 1"]),
    ],
)
def test_bad_input_on_torch(args, fragments):
    assert_one_line_error(metaplug("train", "--backend", "torch", "--iterations", "2", *args, check=False), *fragments)


def test_missing_omniglot_and_an_algorithm_without_the_backend(tmp_path):
    assert_one_line_error(
        metaplug(
            "train",
            "--tasks",
            "omniglot",
            "--algorithm",
            "protonet",
            "--data-dir",
            str(tmp_path),
            "--run-dir",
            str(tmp_path / "run"),
            check=False,
        ),
        "Omniglot archive",
        "not found",
    )
    assert_one_line_error(
        metaplug("train", "--backend", "torch", "--algorithm", "linear-maml", check=False, doubles=True),
        "algorithm 'linear-maml' is not available for backend 'torch'; it supports: numpy",
    )


@pytest.mark.slow
def test_the_default_job_learns_to_adapt(tmp_path):
    """The full default job (about 45 s on 2 CPU cores): one inner step must cut the held-out MSE."""
    metaplug("train", "--run-dir", str(tmp_path / "default"), "--quiet")
    test = json.loads((tmp_path / "default" / "results.json").read_text())["test"]
    assert test["loss"]["mean"] < 1.0 and test["loss"]["mean"] < 0.4 * test["loss_before"]["mean"]

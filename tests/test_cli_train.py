"""``metaplug train`` and ``metaplug evaluate`` as a user runs them, with the numpy test-double plugin."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cli_assertions import assert_one_line_error
from doubles import DOUBLES

from metaplug.experiment import checkpoint as checkpoints

SMALL = [
    "--backend",
    "numpy",
    "--algorithm",
    "linear-maml",
    "--meta-batch-size",
    "4",
    "--val-every",
    "5",
    "--val-tasks",
    "4",
    "--test-tasks",
    "10",
    "--log-every",
    "2",
]


def metaplug(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(DOUBLES)}
    done = subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    metaplug("train", *SMALL, "--iterations", "20", "--run-dir", str(run), check=True)
    return run


def test_dry_run_prints_the_resolved_config_with_overrides_applied(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text(
        'backend = "numpy"\n[algorithm]\nname = "linear-maml"\ninner_lr = 0.05\n'
        "[optimizer]\nlr = 0.01\n[train]\niterations = 7\n"
    )
    done = metaplug(
        "train",
        "--config",
        str(config),
        "--lr",
        "0.02",
        "--set",
        "algorithm.inner_steps=3",
        "--set",
        "train.meta_batch_size=9",
        "--dry-run",
        check=True,
    )
    resolved = tomllib.loads(done.stdout)
    assert resolved["optimizer"] == {"name": "adam", "lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert resolved["algorithm"] == {"name": "linear-maml", "inner_lr": 0.05, "inner_steps": 3, "first_order": False}
    assert resolved["train"]["iterations"] == 7 and resolved["train"]["meta_batch_size"] == 9
    assert resolved["tasks"] == {
        "name": "sinusoid",
        "shots": 10,
        "queries": 10,
        "amplitude": [0.1, 5.0],
        "phase": [0.0, math.pi],
        "x_range": [-5.0, 5.0],
    }
    as_json = json.loads(metaplug("train", "--config", str(config), "--dry-run", "--format", "json", check=True).stdout)
    assert as_json["algorithm"]["inner_lr"] == 0.05 and as_json["model"]["name"] is None
    assert not Path("runs").exists() or not any(p.name.endswith("-numpy") for p in Path("runs").iterdir())


def test_train_writes_the_run_and_prints_held_out_losses(trained):
    assert {p.name for p in trained.iterdir()} >= {"config.toml", "metrics.jsonl", "checkpoint", "results.json"}
    results = json.loads((trained / "results.json").read_text())
    assert results["step"] == 20 and results["test"]["loss"]["n"] == 10


def test_train_output_is_quiet_when_not_a_terminal(tmp_path):
    done = metaplug("train", *SMALL, "--iterations", "6", "--run-dir", str(tmp_path / "r"), check=True)
    assert "\r" not in done.stderr and "ETA" not in done.stderr
    assert "held-out test tasks (10 episodes, 1 inner step): MSE after adaptation" in done.stdout
    quiet = metaplug("train", *SMALL, "--iterations", "6", "--run-dir", str(tmp_path / "q"), "--quiet", check=True)
    assert quiet.stderr == "" and quiet.stdout.count("\n") == 1


def test_evaluate_reports_a_confidence_interval_and_writes_evaluation_json(trained):
    done = metaplug("evaluate", str(trained), "--episodes", "30", "--steps", "3", "--json", check=True)
    result = json.loads(done.stdout)
    assert result["episodes"] == 30 and result["steps"] == 3 and result["split"] == "test"
    assert result["loss"]["n"] == 30 and result["loss"]["ci95"] > 0
    assert json.loads((trained / "evaluation.json").read_text()) == result
    text = metaplug("evaluate", str(trained), "--episodes", "30", check=True).stdout
    assert "30 test episodes" in text and "MSE after adaptation" in text and "±" in text


@pytest.mark.parametrize(
    "signum, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_or_sigterm_saves_a_checkpoint_exits_128_plus_signal_and_resume_finishes(tmp_path, signum, status, word):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(DOUBLES)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metaplug",
            "train",
            *SMALL,
            "--iterations",
            "100000000",
            "--checkpoint-every",
            "0",
            "--run-dir",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == status
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {word} at step ") and "--resume" in last
    step = checkpoints.load(run / "checkpoint").step
    assert f"step {step};" in last
    metaplug("train", "--resume", str(run), "--iterations", str(step + 3), "--quiet", check=True)
    assert checkpoints.load(run / "checkpoint").step == step + 3


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--algorithm", "linear-mam"], ["unknown algorithm 'linear-mam'", "Did you mean 'linear-maml'?"]),
        (["--tasks", "sinusiod"], ["unknown task sampler 'sinusiod'", "Did you mean 'sinusoid'?"]),
        (["--backend", "nmpy"], ["unknown backend 'nmpy'", "Did you mean 'numpy'?"]),
        (["--optimizer", "adan"], ["unknown optimizer 'adan'", "Did you mean 'adam'?"]),
        (["--tasks", "omniglot"], ["'linear-maml' does not support classification tasks"]),
        (["--optimizer", "inner-sgd"], ["inner-loop rule", "adam, sgd"]),
        (["--meta-batch-size", "0"], ["train.meta_batch_size must be at least 1, got 0"]),
        (["--iterations", "-3"], ["train.iterations must be at least 1"]),
        (["--lr", "-1"], ["optimizer.lr must be greater than 0"]),
        (["--inner-lr", "0"], ["algorithm.inner_lr must be greater than 0"]),
        (["--seed", "-1"], ["seed must be in [0, 18446744073709551615], got -1"]),
        (["--iterations", "many"], ["'many' is not a valid integer"]),
        (["--ways", "5"], ["task sampler 'sinusoid' has no option 'ways'", "It accepts: shots, queries"]),
        (["--set", "algorithm.inner_lrr=0.1"], ["has no option 'inner_lrr'", "Did you mean 'inner_lr'?"]),
        (["--set", "algorithm.first_order=3"], ["algorithm.first_order must be true or false, got 3"]),
        (["--set", "train.iterationz=3"], ["unknown key train.iterationz", "Did you mean 'iterations'?"]),
        (["--set", "trian.iterations=3"], ["unknown config section 'trian'", "Did you mean 'train'?"]),
        (["--set", "iterations"], ["--set expects SECTION.KEY=VALUE"]),
        (["--data-dir", "/nonexistent/metaplug-data"], ["data directory /nonexistent/metaplug-data does not exist"]),
        (["--config", "/nonexistent/job.toml"], ["config file /nonexistent/job.toml does not exist"]),
        (["--device", "cpu"], ["backend 'numpy' takes no device; remove device = 'cpu'"]),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(args, fragments):
    assert_one_line_error(metaplug("train", "--backend", "numpy", "--algorithm", "linear-maml", *args), *fragments)


def test_bad_files_and_runs_are_one_line_errors(tmp_path, trained):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\niterations = 3\n")
    assert_one_line_error(metaplug("train", "--config", str(bad)), "is not valid TOML")
    assert_one_line_error(
        metaplug("train", "--resume", str(trained), "--lr", "0.1"),
        "only --iterations, --device, --log, --nproc and --devices may change",
        "--lr",
    )
    assert_one_line_error(metaplug("train", *SMALL, "--run-dir", str(trained)), "already holds a run", "--resume")
    assert_one_line_error(metaplug("evaluate", str(tmp_path)), "not a metaplug run directory")
    assert_one_line_error(
        metaplug("train", "--resume", "/nonexistent/run"), "run directory /nonexistent/run does not exist"
    )
    broken = tmp_path / "broken"
    metaplug("train", *SMALL, "--iterations", "2", "--run-dir", str(broken), check=True)
    npz = next((broken / "checkpoint").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-20] + b"\0" * 20)
    assert_one_line_error(metaplug("evaluate", str(broken)), "corrupt")
    assert_one_line_error(metaplug("train", "--resume", str(broken), "--iterations", "4"), "corrupt")

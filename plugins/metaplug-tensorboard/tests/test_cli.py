"""`metaplug train --log tensorboard` on the default job writes events TensorBoard reads back."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
import types

import pytest

sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))  # see test_observer
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def metaplug(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, timeout=600)


def test_the_observer_is_discovered_and_listed():
    done = metaplug("list", "observers", "--json")
    assert done.returncode == 0, done.stderr
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert listed["tensorboard"]["plugins"] == ["tensorboard"] and "jsonl" in listed


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the default job runs on metaplug-torch")
def test_train_log_tensorboard_on_the_default_job_writes_readable_events(tmp_path):
    run = tmp_path / "run"
    done = metaplug(
        "train",
        "--log",
        "tensorboard",
        "--iterations",
        "20",
        "--meta-batch-size",
        "5",
        "--log-every",
        "5",
        "--val-every",
        "10",
        "--val-tasks",
        "5",
        "--test-tasks",
        "10",
        "--run-dir",
        str(run),
        "-q",
    )
    assert done.returncode == 0, done.stderr
    assert tomllib.loads((run / "config.toml").read_text())["train"]["observers"] == ["jsonl", "tensorboard"]
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/loss_before", "test/loss", "test/loss_before"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    assert [e.step for e in events.Scalars("val/loss")] == [10, 20]
    assert (run / "metrics.jsonl").is_file()  # the built-in observer still runs

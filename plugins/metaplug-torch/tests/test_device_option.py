"""``device`` (``--device``): where the torch backend runs a training, a resume and an evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
import torch

TINY = [
    "--backend",
    "torch",
    "--iterations",
    "2",
    "--meta-batch-size",
    "2",
    "--val-every",
    "0",
    "--test-tasks",
    "0",
    "--quiet",
]


def metaplug(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True)


def test_device_is_saved_and_can_change_on_resume_and_evaluation(tmp_path):
    run = tmp_path / "run"
    done = metaplug("train", *TINY, "--device", "cpu", "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    assert tomllib.loads((run / "config.toml").read_text())["device"] == "cpu"
    resumed = metaplug("train", "--resume", str(run), "--iterations", "3", "--device", "cpu:0", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert tomllib.loads((run / "config.toml").read_text())["device"] == "cpu:0"
    evaluated = metaplug("evaluate", str(run), "--episodes", "2", "--device", "cpu", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["step"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "device, message",
    [("cuda", "device 'cuda' requested but CUDA is not available"), ("tpu", "invalid torch device 'tpu'")],
)
def test_an_unusable_device_is_a_one_line_error(tmp_path, device, message):
    done = metaplug("train", *TINY, "--device", device, "--run-dir", str(tmp_path / "run"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_run_configured_for_a_missing_gpu_says_how_to_evaluate_it_here(tmp_path):
    run = tmp_path / "run"
    assert metaplug("train", *TINY, "--device", "cpu", "--run-dir", str(run)).returncode == 0
    config = run / "config.toml"
    config.write_text(config.read_text().replace('device = "cpu"', 'device = "cuda"'))  # as if trained on a GPU
    done = metaplug("evaluate", str(run), "--episodes", "2")
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    assert "CUDA is not available" in done.stderr and "pass --device, e.g. --device cpu" in done.stderr
    assert metaplug("evaluate", str(run), "--episodes", "2", "--device", "cpu").returncode == 0

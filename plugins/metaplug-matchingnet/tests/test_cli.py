"""`metaplug train` trains the plugin's algorithm like a first-party one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metaplug.tasks.datasets import data_dir


@pytest.mark.skipif(
    not (data_dir("omniglot") / "images_background.zip").is_file(),
    reason="Omniglot not available (set METAPLUG_DATA_DIR)",
)
def test_metaplug_train_runs_matching_networks_on_omniglot(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaplug",
            "train",
            "--algorithm",
            "matchingnet",
            "--backend",
            "torch",
            "--tasks",
            "omniglot",
            "--ways",
            "5",
            "--shots",
            "1",
            "--queries",
            "2",
            "--iterations",
            "3",
            "--meta-batch-size",
            "2",
            "--val-every",
            "0",
            "--test-tasks",
            "4",
            "--set",
            "model.filters=8",
            "--set",
            "algorithm.scale=5.0",
            "--run-dir",
            str(run),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "held-out test tasks" in result.stdout
    assert (run / "checkpoint").exists() and (run / "results.json").is_file()
    config = (run / "config.toml").read_text()
    assert 'name = "matchingnet"' in config and "scale = 5.0" in config
    assert json.loads((run / "results.json").read_text())

"""Importing TensorFlow through the plugin keeps its C++ banner off stderr (one-line errors stay one line)."""

import os
import subprocess
import sys


def test_import_prints_nothing_on_stderr():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", "from metaplug_tensorflow._tf import tf; print(tf.__version__)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip()
    assert result.stderr == ""


def test_bad_input_on_tensorflow_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaplug",
            "train",
            "--backend",
            "tensorflow",
            "--iterations",
            "2",
            "--quiet",
            "--set",
            "algorithm.batching=weird",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: algorithm.batching must be one of auto, vectorized, loop, reference, got 'weird'"
    ]

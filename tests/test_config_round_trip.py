"""``config.toml`` round-trips every string, paths with emoji and undecodable bytes included."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from doubles import DOUBLES

from metaplug.experiment import config, files, runner
from metaplug.experiment.tomlio import dumps, encode, read_toml

STRANGE = {
    "emoji": "/data/\U0001f600 run/\u00e9t\u00e9",
    "undecodable": os.fsdecode(b"/data/caf\xe9/\xff\xfe"),
    "quotes": "C:\\data\\\"q\" 'x'\n\ttab",
}
"""Strings outside the Basic Multilingual Plane, a path that is not UTF-8, TOML's escapes."""

STRING_SETTINGS = [
    key for key, setting in config.SETTINGS.items() if setting.kind in (str, str | None) and not setting.choices
]
"""Settings that hold any string (``train.monitor_mode`` holds one of its choices)."""


def test_every_string_setting_is_covered():
    assert set(STRING_SETTINGS) >= {"backend", "device", "data_dir", "tasks.name", "algorithm.name"}


@pytest.mark.parametrize("key", [*STRING_SETTINGS, "tasks.root", "algorithm.inner_rule", "model.norm"])
@pytest.mark.parametrize("kind", sorted(STRANGE))
def test_a_saved_configuration_reads_back_unchanged(tmp_path, key, kind):
    raw = config.defaults()
    config.set_value(raw, key, STRANGE[kind])
    cfg = config.from_dict(raw)
    path = tmp_path / "config.toml"
    files.write_bytes_atomic(path, encode(cfg.to_toml()))
    assert config.from_dict(read_toml(path)) == cfg
    assert runner.load_run_config(tmp_path) == cfg


def test_text_without_undecodable_bytes_is_standard_toml():
    text = dumps({"a": STRANGE["emoji"], "t": {"b": STRANGE["quotes"], "none": None, "n": [1.5, float("inf")]}})
    assert tomllib.loads(encode(text).decode("utf-8")) == {
        "a": STRANGE["emoji"],
        "t": {"b": STRANGE["quotes"], "n": [1.5, float("inf")]},
    }


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
@pytest.mark.parametrize("kind", ["emoji", "undecodable"])
def test_a_run_in_a_strange_folder_trains_evaluates_resumes_and_plots(tmp_path, kind):
    name = {"emoji": "d\U0001f600".encode(), "undecodable": b"d\xff"}[kind]
    data = Path(os.fsdecode(bytes(tmp_path) + b"/" + name))
    data.mkdir()
    run = data / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DOUBLES), os.environ.get("PYTHONPATH", "")])}

    def metaplug(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done

    small = ["--backend", "numpy", "--algorithm", "linear-maml", "--meta-batch-size", "4", "--test-tasks", "4"]
    metaplug("train", *small, "--val-every", "0", "--iterations", "4", "--data-dir", str(data), "--run-dir", str(run))
    assert runner.load_run_config(run).data_dir == str(data)
    metaplug("evaluate", str(run), "--episodes", "3")
    metaplug("train", "--resume", str(run), "--iterations", "6", "--quiet")
    assert runner.load_run_config(run).train.iterations == 6
    pytest.importorskip("matplotlib")
    metaplug("plot", str(run))
    assert (run / "plots" / "learning_curves.png").is_file()

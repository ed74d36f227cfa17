"""``metaplug plot``: PNG learning curves and the sinusoid figure; a clear error without matplotlib."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from doubles import DOUBLES

PNG = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(DOUBLES)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plot") / "run"
    done = run(
        "-m",
        "metaplug",
        "train",
        "--backend",
        "numpy",
        "--algorithm",
        "linear-maml",
        "--iterations",
        "30",
        "--meta-batch-size",
        "4",
        "--val-every",
        "10",
        "--val-tasks",
        "4",
        "--test-tasks",
        "4",
        "--log-every",
        "5",
        "--inner-lr",
        "0.1",
        "--run-dir",
        str(folder),
    )
    assert done.returncode == 0, done.stderr
    return folder


def test_plot_writes_learning_curves_and_the_sinusoid_figure(trained, tmp_path):
    pytest.importorskip("matplotlib")
    done = run("-m", "metaplug", "plot", str(trained), "--out", str(tmp_path / "figures"))
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.split()]
    assert [p.name for p in written] == ["learning_curves.png", "sinusoid_adaptation.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    default = run("-m", "metaplug", "plot", str(trained))
    assert default.returncode == 0 and (trained / "plots" / "sinusoid_adaptation.png").is_file()


def test_missing_matplotlib_is_a_one_line_install_hint(trained):
    script = (
        f"import sys; sys.modules['matplotlib'] = None\nfrom metaplug.cli import main\nmain(['plot', {str(trained)!r}])"
    )
    done = run("-c", script)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "Error: plotting needs matplotlib: pip install 'metaplug[plot]'"

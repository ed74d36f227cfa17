"""``metaplug compare``: settings that differ, held-out scores with intervals, JSON, learning curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_assertions import assert_one_line_error
from test_cli_train import SMALL, metaplug

from metaplug.experiment.comparison import RunSummary, differing_keys, flatten


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    metaplug("train", *SMALL, "--iterations", "10", "--run-dir", str(root / "slow"), "-q", check=True)
    metaplug(
        "train", *SMALL, "--iterations", "10", "--inner-lr", "0.05", "--run-dir", str(root / "fast"), "-q", check=True
    )
    return root / "slow", root / "fast"


def test_the_table_shows_only_the_settings_that_differ_and_scores_with_intervals(runs):
    slow, fast = runs
    done = metaplug("compare", str(slow), str(fast), check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "settings that differ:"
    assert lines[1].split() == ["setting", "slow", "fast"]
    assert lines[3].split() == ["algorithm.inner_lr", "0.01", "0.05"]
    assert not any(line.startswith("seed") or line.startswith("backend") for line in lines)  # the same in both
    scores = lines[lines.index("held-out test scores (mean ± 95% CI):") :]
    assert scores[1].split() == ["run", "steps", "checkpoint", "scored", "by", "episodes", "loss", "loss_before"]
    results = json.loads((slow / "results.json").read_text())["test"]
    row = scores[3]
    assert row.startswith("slow") and "best (step 10)" in row and " train " in row
    assert f"{results['loss']['mean']:.4g} ± {results['loss']['ci95']:.3g}" in row


def test_json_has_each_runs_differing_settings_and_scores(runs):
    slow, fast = runs
    done = metaplug("compare", str(slow), str(fast), "--json", check=True)
    data = json.loads(done.stdout)
    assert data["differing"] == ["algorithm.inner_lr"] and data["metrics"] == ["loss", "loss_before"]
    first, second = data["runs"]
    assert first["label"] == "slow" and first["config"] == {"algorithm.inner_lr": 0.01} and first["step"] == 10
    assert second["config"] == {"algorithm.inner_lr": 0.05}
    assert first["scored"] == {"source": "train", "checkpoint": "best", "checkpoint_step": 10, "episodes": 10}
    assert first["scores"]["loss"] == json.loads((slow / "results.json").read_text())["test"]["loss"]


def test_evaluate_scores_replace_the_training_ones(runs, tmp_path):
    slow, fast = runs
    metaplug("evaluate", str(fast), "--episodes", "12", "--checkpoint", "last", check=True)
    data = json.loads(metaplug("compare", str(slow), str(fast), "--json", check=True).stdout)
    scored = data["runs"][1]["scored"]
    assert scored == {"source": "evaluate", "checkpoint": "last", "checkpoint_step": 10, "episodes": 12}
    assert data["runs"][1]["scores"]["loss"]["n"] == 12


def test_plot_draws_the_learning_curves(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    done = metaplug("compare", *map(str, runs), "--plot", str(out), check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"learning curves: {out}" in done.stdout


def test_bad_runs_are_one_line_errors(runs, tmp_path):
    slow, _ = runs
    assert_one_line_error(metaplug("compare", str(slow), str(tmp_path / "nope")), "nope does not exist")
    assert_one_line_error(metaplug("compare", str(slow), str(slow)), "is given twice")
    assert_one_line_error(metaplug("compare"), "Missing argument")


def test_differing_settings_include_one_that_a_run_lacks():
    def run(**config):
        return RunSummary(Path("r"), "r", flatten(config), 1, "regression")

    runs = [run(seed=0, train={"observers": ["jsonl"]}), run(seed=0, train={"observers": []}, extra=1)]
    assert differing_keys(runs) == ["extra"]  # observers do not change what a run learns
    assert flatten({"train": {"observers": ["jsonl"]}}) == {"train.observers": ("jsonl",)}

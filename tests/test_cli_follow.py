"""Following runs from the CLI: best checkpoint, early stopping, observers (`--log`)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from cli_assertions import assert_one_line_error
from test_cli_train import SMALL, metaplug

from metaplug.experiment import checkpoint as checkpoints


def test_evaluate_uses_the_best_checkpoint_when_there_is_one_and_says_so(tmp_path):
    run = tmp_path / "run"
    metaplug("train", *SMALL, "--iterations", "12", "--run-dir", str(run), "-q", check=True)
    best_step = checkpoints.load(run / "best").step
    assert best_step in (5, 10) and checkpoints.load(run / "checkpoint").step == 12
    done = metaplug("evaluate", str(run), "--episodes", "6", check=True)
    assert f"best checkpoint (step {best_step}): 6 test episodes" in done.stdout
    assert json.loads((run / "evaluation.json").read_text())["checkpoint"] == "best"
    done = metaplug("evaluate", str(run), "--episodes", "6", "--checkpoint", "last", "--json", check=True)
    result = json.loads(done.stdout)
    assert (result["checkpoint"], result["step"]) == ("last", 12)


def test_a_run_without_validation_is_evaluated_with_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    metaplug("train", *SMALL, "--iterations", "4", "--val-every", "0", "--run-dir", str(run), "-q", check=True)
    done = metaplug("evaluate", str(run), "--episodes", "6", check=True)
    assert "last checkpoint (step 4)" in done.stdout
    assert_one_line_error(
        metaplug("evaluate", str(run), "--checkpoint", "best"), "has no best checkpoint", "train.val_every 0"
    )


def test_train_patience_stops_early_and_says_why(tmp_path):
    run = tmp_path / "run"
    # --min-delta 1e9 via --set: no validation after the first counts as an improvement
    done = metaplug(
        "train",
        *SMALL,
        "--iterations",
        "100",
        "--patience",
        "2",
        "--set",
        "train.min_delta=1e9",
        "--run-dir",
        str(run),
        check=True,
    )
    assert "stopped early at step 15: no improvement of val loss in 2 validations (best " in done.stdout
    assert "at step 5)" in done.stdout and "(best checkpoint, step 5)" in done.stdout
    assert json.loads((run / "results.json").read_text())["stopped_early"] is True
    assert_one_line_error(metaplug("train", "--resume", str(run), "--iterations", "200"), "stopped early at step 15")
    assert_one_line_error(
        metaplug("train", *SMALL, "--patience", "2", "--val-every", "0", "--run-dir", str(tmp_path / "x")),
        "train.patience 2 needs validation",
    )


def observers(run: Path) -> list[str]:
    return tomllib.loads((run / "config.toml").read_text())["train"]["observers"]


def test_log_names_observers_and_a_resumed_run_can_add_one(tmp_path):
    run = tmp_path / "run"
    assert_one_line_error(
        metaplug("train", *SMALL, "--log", "jsonn", "--run-dir", str(run)), "unknown observer 'jsonn'", "'jsonl'"
    )
    assert not run.exists()
    metaplug("train", *SMALL, "--iterations", "4", "--run-dir", str(run), "-q", check=True)
    assert observers(run) == ["jsonl"]
    assert_one_line_error(metaplug("train", "--resume", str(run), "--log", "nope", "--iterations", "6"), "'nope'")
    assert observers(run) == ["jsonl"]


def test_observers_are_listed_and_described():
    listed = json.loads(metaplug("list", "observers", "--json", check=True).stdout)
    assert {"name": "jsonl", "plugins": ["metaplug"]}.items() <= next(e for e in listed if e["name"] == "jsonl").items()
    info = metaplug("info", "observer", "jsonl", check=True).stdout
    assert "observer 'jsonl' from plugin 'metaplug'" in info and "metrics.jsonl" in info


def test_predict_uses_the_best_checkpoint_unless_told_otherwise(tmp_path):
    run = tmp_path / "run"
    metaplug("train", *SMALL, "--iterations", "12", "--run-dir", str(run), "-q", check=True)
    best_step = checkpoints.load(run / "best").step
    (tmp_path / "support.csv").write_text("x,y\n-1.0,0.5\n0.0,0.1\n1.0,-0.4\n2.0,-0.8\n")
    (tmp_path / "query.csv").write_text("x\n0.5\n1.5\n")
    args = ("predict", str(run), "--support", str(tmp_path / "support.csv"), "--query", str(tmp_path / "query.csv"))
    best = metaplug(*args, "--out", str(tmp_path / "best.csv"), check=True)
    assert f"2 predictions written to {tmp_path / 'best.csv'} (best checkpoint, step {best_step})" in best.stdout
    last = metaplug(*args, "--checkpoint", "last", check=True).stdout
    assert last != (tmp_path / "best.csv").read_text() and last.startswith("query,output_0\n")

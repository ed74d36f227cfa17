"""Best checkpoint and early stopping, on a numpy test-double run whose validation peaks early."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_experiment_runner import make_config, rows_without_time

from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import runner
from metaplug.experiment.components import check

PEAK = 20
"""The outer step at which the patched validation loss is lowest."""


@pytest.fixture
def peaking(double, monkeypatch):
    """Validation loss (and only validation: training is untouched) gains ``(t - PEAK)**2``,
    ``t`` the outer optimizer's step count: it falls until step 20, then rises, as in a run that
    overfits. ``t`` is part of the checkpoint, so a resumed run sees the same curve."""
    import metaplug_double

    original = metaplug_double.LinearMAML.evaluate

    def evaluate(self, batch, steps=None):
        metrics = original(self, batch, steps)
        return {**metrics, "loss": metrics["loss"] + float(self.optimizer.t - PEAK) ** 2}

    monkeypatch.setattr(metaplug_double.LinearMAML, "evaluate", evaluate)


def early_stopping(**train):
    return make_config(**{"iterations": 100, "val_every": 5, "patience": 3, "test_tasks": 10, **train})


def test_training_stops_after_patience_validations_without_improvement(peaking, tmp_path):
    result = runner.start(early_stopping(), tmp_path / "run", progress=False).run()
    run = tmp_path / "run"
    assert result.step == 35  # validations at 25, 30 and 35 do not beat step 20
    assert result.results["stopped_early"] is True
    assert result.results["best"] == {
        "step": PEAK,
        "monitor": "loss",
        "value": checkpoints.load(run / "best").record["validation"]["loss"],
    }
    assert checkpoints.load(run / "checkpoint").step == 35 and checkpoints.load(run / "best").step == PEAK
    assert result.results["test"]["checkpoint"] == "best" and result.results["test"]["checkpoint_step"] == PEAK
    val = [r for r in rows_without_time(run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [5, 10, 15, 20, 25, 30, 35]
    assert [r["step"] for r in val if r.get("best")] == [5, 10, 15, 20]


def test_the_best_checkpoint_holds_the_weights_of_its_step(peaking, tmp_path):
    runner.start(early_stopping(), tmp_path / "run", progress=False).run()
    runner.start(make_config(iterations=PEAK, val_every=5), tmp_path / "short", progress=False).run()
    best, short = checkpoints.load(tmp_path / "run" / "best"), checkpoints.load(tmp_path / "short" / "checkpoint")
    assert sorted(best.arrays) == sorted(short.arrays)
    assert all(np.array_equal(best.arrays[k], short.arrays[k]) for k in best.arrays)


def test_without_patience_training_runs_to_the_end_and_keeps_the_best(peaking, tmp_path):
    result = runner.start(early_stopping(patience=0, iterations=40), tmp_path / "run", progress=False).run()
    assert result.step == 40 and result.results["stopped_early"] is False
    assert checkpoints.load(tmp_path / "run" / "best").step == PEAK


def test_a_run_that_never_validates_has_no_best_and_is_tested_with_the_last(double, tmp_path):
    result = runner.start(make_config(iterations=10, val_every=0), tmp_path / "run", progress=False).run()
    assert not (tmp_path / "run" / "best").exists()
    assert result.results["test"]["checkpoint"] == "last" and "best" not in result.results
    assert runner.choose_checkpoint(tmp_path / "run") == "last"
    with pytest.raises(ConfigError, match="has no best checkpoint"):
        runner.choose_checkpoint(tmp_path / "run", "best")


def test_resume_keeps_best_and_last_bitwise(peaking, tmp_path, monkeypatch):
    runner.start(early_stopping(), tmp_path / "straight", progress=False).run()

    import metaplug_double

    original = metaplug_double.LinearMAML.meta_train_step
    calls = []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 27:  # after the best (step 20), before stopping (step 35)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(metaplug_double.LinearMAML, "meta_train_step", interrupted)
    with pytest.raises(runner.TrainingInterrupted):
        runner.start(early_stopping(), tmp_path / "resumed", progress=False).run()
    monkeypatch.setattr(metaplug_double.LinearMAML, "meta_train_step", original)
    assert checkpoints.load(tmp_path / "resumed" / "checkpoint").record["selection"] == {
        "best": checkpoints.load(tmp_path / "resumed" / "best").record["validation"]["loss"],
        "best_step": PEAK,
        "waited": 1,
    }
    runner.resume(tmp_path / "resumed", progress=False).run()
    for name in ("checkpoint", "best"):
        a, b = (checkpoints.load(tmp_path / run / name) for run in ("straight", "resumed"))
        assert a.step == b.step
        assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays), name  # bit for bit
    assert rows_without_time(tmp_path / "straight") == rows_without_time(tmp_path / "resumed")
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("straight", "resumed")]
    for r in results:
        r.pop("elapsed_s")
    assert results[0] == results[1]


def test_a_run_that_stopped_early_is_not_resumed(peaking, tmp_path):
    runner.start(early_stopping(), tmp_path / "run", progress=False).run()
    with pytest.raises(ConfigError, match="stopped early at step 35") as refused:
        runner.resume(tmp_path / "run", iterations=200)
    assert "metaplug evaluate" in str(refused.value)


def test_monitor_settings_are_resolved_and_checked(double, tmp_path):
    cfg = check(make_config())
    assert (cfg.train.monitor, cfg.train.monitor_mode) == ("loss", "min")  # regression: the loss, minimised
    with pytest.raises(ConfigError, match="train.monitor 'accuracy' needs classification tasks"):
        check(make_config(monitor="accuracy"))
    with pytest.raises(ConfigError, match="train.patience 3 needs validation"):
        check(make_config(patience=3, val_every=0))
    with pytest.raises(ConfigError, match="train.monitor_mode must be one of auto, min, max, got 'up'"):
        make_config(monitor_mode="up")
    with pytest.raises(ConfigError, match="train.patience must be at least 0"):
        make_config(patience=-1)


def test_an_unknown_monitor_names_the_validation_metrics(double, tmp_path):
    trainer = runner.start(make_config(monitor="acc", iterations=10), Path(tmp_path / "run"), progress=False)
    with pytest.raises(ConfigError, match="train.monitor 'acc' is not a validation metric; validation reports: loss"):
        trainer.run()
    assert not (tmp_path / "run").exists()  # a new run that fails before its first checkpoint leaves nothing


def test_a_best_checkpoint_from_steps_the_resumed_run_did_not_train_again_is_not_used(peaking, tmp_path):
    """Killed after the best (step 20) with the last checkpoint at step 10, then resumed to
    step 12 only: best/ still holds step 20, which this run's history never reached."""
    run = tmp_path / "run"
    runner.start(early_stopping(patience=0, iterations=25, checkpoint_every=10), run, progress=False).run()
    runner.start(make_config(iterations=10, val_every=5, checkpoint_every=10), tmp_path / "ten", progress=False).run()
    for path in (run / "checkpoint").iterdir():
        path.unlink()
    for path in (tmp_path / "ten" / "checkpoint").iterdir():
        (run / "checkpoint" / path.name).write_bytes(path.read_bytes())
    (run / "results.json").unlink()
    result = runner.resume(run, iterations=12, progress=False).run()
    assert checkpoints.load(run / "best").step == PEAK  # untouched: no validation after step 10
    assert result.results["test"]["checkpoint"] == "last" and "best" not in result.results
    assert runner.stale_best(run) and runner.choose_checkpoint(run) == "last"

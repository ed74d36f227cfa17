"""The observer writes event files that TensorBoard's own reader (EventAccumulator) reads back."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from metaplug.contract.observers import RunStart
from metaplug.testing import ObserverConformance
from metaplug_tensorboard.observer import FOLDER, TensorBoardObserver, config_markdown, flatten

# TensorBoard's reader imports TensorFlow for file access when it can (seconds); this marker module,
# TensorBoard's own "no_tensorflow" switch, makes it use its built-in stub instead.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

CONFIG = {
    "backend": "torch",
    "device": None,
    "seed": 0,
    "algorithm": {"name": "maml", "inner_lr": 0.01},
    "train": {"iterations": 10, "observers": ["jsonl", "tensorboard"]},
}


def read(run_dir: Path) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(str(run_dir / FOLDER), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, round(e.value, 5)) for e in accumulator.Scalars(tag)]


def run(run_dir: Path, start: int, end: int, offset: float = 0.0, results=None) -> None:
    """Drive an observer as the runner does, from ``start`` (a resumed run) to ``end``."""
    observer = TensorBoardObserver()
    observer.on_run_start(RunStart(run_dir, CONFIG, start, end, "regression"))
    for step in range(start + 1, end + 1):
        observer.on_train_metrics(step, {"loss": 1.0 / step + offset, "elapsed": 0.1 * step})
        if step % 5 == 0:
            observer.on_validation(step, {"loss": 2.0 / step + offset, "loss_before": 3.0, "elapsed": 1.0}, True)
            observer.on_checkpoint(step, "best")
    observer.on_run_end(end, "completed" if results else "interrupted", results or {})


def test_metrics_config_test_scores_and_hparams_are_in_the_events(tmp_path):
    results = {"test": {"split": "test", "episodes": 20, "loss": {"mean": 0.25, "ci95": 0.05, "std": 0.1, "n": 20}}}
    run(tmp_path, 0, 10, results=results)
    events = read(tmp_path)
    tags = events.Tags()
    assert {"train/loss", "val/loss", "val/loss_before", "test/loss", "test/loss_ci95"} <= set(tags["scalars"])
    assert "train/elapsed" not in tags["scalars"]
    assert scalars(events, "train/loss")[:2] == [(1, 1.0), (2, 0.5)]
    assert scalars(events, "val/loss") == [(5, 0.4), (10, 0.2)]
    assert scalars(events, "test/loss") == [(10, 0.25)]
    assert "config/text_summary" in tags["tensors"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| `algorithm.inner_lr` | `0.01` |" in text
    plugins = events.PluginTagToContent("hparams")
    assert set(plugins) >= {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert b"algorithm.inner_lr" in plugins["_hparams_/session_start_info"]


def test_a_resumed_run_hides_the_steps_logged_after_its_checkpoint(tmp_path):
    run(tmp_path, 0, 8)  # killed at step 8, last checkpoint at step 5
    run(tmp_path, 5, 10, offset=100.0)  # resumed from step 5: steps 6-8 are logged again
    steps = [step for step, _ in scalars(read(tmp_path), "train/loss")]
    assert steps == list(range(1, 11))  # each step once
    values = dict(scalars(read(tmp_path), "train/loss"))
    assert values[5] == 0.2 and values[6] == pytest.approx(1 / 6 + 100.0, rel=1e-6)  # the resumed run's values


def test_an_interrupted_run_closes_its_writer_without_test_scores(tmp_path):
    observer = TensorBoardObserver()
    observer.on_run_start(RunStart(tmp_path, CONFIG, 0, 10, "regression"))
    observer.on_train_metrics(1, {"loss": 1.0})
    observer.on_run_end(1, "interrupted", {})
    assert observer.writer is None
    assert "test/loss" not in read(tmp_path).Tags()["scalars"]


def test_the_config_is_flattened_without_unset_values():
    assert flatten(CONFIG) == {
        "backend": "torch",
        "seed": 0,
        "algorithm.name": "maml",
        "algorithm.inner_lr": 0.01,
        "train.iterations": 10,
        "train.observers": ["jsonl", "tensorboard"],
    }
    assert config_markdown({"seed": 3}).splitlines() == ["| setting | value |", "| --- | --- |", "| `seed` | `3` |"]


class TestTensorBoardConformance(ObserverConformance):
    observer = "tensorboard"

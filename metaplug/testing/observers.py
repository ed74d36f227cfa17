"""Conformance checks for run observers: the whole life of a run, interrupted, resumed, failed, discarded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from metaplug.contract.observers import RunObserver, RunStart
from metaplug.testing.components import ComponentConformance

CONFIG: dict[str, Any] = {
    "backend": "torch",
    "seed": 0,
    "tasks": {"name": "omniglot", "ways": 5, "shots": 1},
    "algorithm": {"name": "maml", "inner_lr": 0.4, "first_order": False},
    "optimizer": {"name": "adam", "lr": 0.001},
    "train": {"iterations": 20, "val_every": 10, "observers": ["jsonl"]},
}
"""A resolved configuration as observers receive it (``RunStart.config``)."""


def results(step: int) -> dict[str, Any]:
    """``results.json`` of a completed classification run, as ``on_run_end`` receives it."""
    stats = {"mean": 0.9, "ci95": 0.01, "std": 0.12, "n": 600}
    return {
        "step": step,
        "elapsed_s": 12.5,
        "problem": "classification",
        "stopped_early": False,
        "best": {"step": 10, "monitor": "accuracy", "value": 0.9},
        "test": {
            "split": "test",
            "checkpoint": "best",
            "checkpoint_step": 10,
            "episodes": 600,
            "steps": 3,
            "seed": 0,
            "accuracy": stats,
            "loss": {**stats, "mean": 0.3},
            "loss_before": {"mean": None, "ci95": None, "std": None, "n": 600},
        },
    }


class ObserverConformance(ComponentConformance):
    """Subclass with ``observer = "name"``: drives the observer through runs as the runner does."""

    kind: ClassVar[str] = "observers"
    observer: ClassVar[str] = ""
    """Name of the observer under test."""

    @classmethod
    def component_name(cls) -> str:
        return cls.observer

    def make(self) -> RunObserver:
        return self.load()()

    @pytest.fixture
    def run_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
        """The run directory; the working directory is an empty folder beside it, which must stay empty."""
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        yield tmp_path / "run"
        assert list(cwd.iterdir()) == [], "the observer wrote outside the run directory (into the working directory)"

    def train(self, observer: RunObserver, start: int, end: int, offset: float = 0.0) -> None:
        """Steps ``start + 1`` to ``end``: metrics every 5 steps, validation and checkpoints every 10."""
        for step in range(start + 1, end + 1):
            if step % 5 == 0:
                metrics = {"loss": 1.0 / step + offset, "accuracy": 0.5 + step / 100, "elapsed": step / 10}
                observer.on_train_metrics(step, metrics)
            if step % 10 == 0:
                observer.on_checkpoint(step, "best")
                scores = {"loss": 2.0 / step, "loss_before": float("nan"), "accuracy": 0.8, "elapsed": step / 10}
                observer.on_validation(step, scores, step == 10)
                observer.on_checkpoint(step, "last")

    def test_the_observer_is_a_run_observer_built_without_arguments(self) -> None:
        observer = self.make()
        assert isinstance(observer, RunObserver), "subclass metaplug.contract.observers.RunObserver"

    def test_a_whole_run(self, run_dir: Path) -> None:
        run_dir.mkdir()
        observer = self.make()
        observer.on_run_start(RunStart(run_dir, CONFIG, 0, 20, "classification"))
        self.train(observer, 0, 20)
        observer.on_run_end(20, "completed", results(20))

    def test_an_interrupted_run_resumed_by_a_new_observer(self, run_dir: Path) -> None:
        run_dir.mkdir()
        first = self.make()
        first.on_run_start(RunStart(run_dir, CONFIG, 0, 20, "classification"))
        self.train(first, 0, 13)
        first.on_run_end(13, "interrupted", {})
        second = self.make()  # the resumed process: a new observer, started at the checkpoint's step
        second.on_run_start(RunStart(run_dir, CONFIG, 10, 20, "classification"))
        self.train(second, 10, 20, offset=1.0)
        second.on_run_end(20, "completed", results(20))

    def test_a_run_that_fails_after_a_checkpoint(self, run_dir: Path) -> None:
        run_dir.mkdir()
        observer = self.make()
        observer.on_run_start(RunStart(run_dir, CONFIG, 0, 20, "regression"))
        self.train(observer, 0, 12)
        observer.on_run_end(12, "failed", {})

    def test_a_discarded_run_leaves_nothing_of_the_observer(self, run_dir: Path) -> None:
        """A new run that fails before its first checkpoint is discarded: the host removes its
        files, and the observer removes its own."""
        run_dir.mkdir()
        (run_dir / "config.toml").write_text("seed = 0\n")  # the host's, removed by the host
        observer = self.make()
        observer.on_run_start(RunStart(run_dir, CONFIG, 0, 20, "classification"))
        self.train(observer, 0, 7)  # metrics at step 5, no validation, no checkpoint
        observer.on_run_end(7, "discarded", {})
        left = sorted(p.name for p in run_dir.iterdir())
        assert left == ["config.toml"], f"a discarded run left {left} in the run directory; remove what you wrote"

    def test_two_runs_in_one_process_keep_to_their_own_directories(self, run_dir: Path) -> None:
        other = run_dir.with_name("other")
        for path in (run_dir, other):
            path.mkdir()
        first, second = self.make(), self.make()
        first.on_run_start(RunStart(run_dir, CONFIG, 0, 10, "classification"))
        second.on_run_start(RunStart(other, CONFIG, 0, 10, "classification"))
        self.train(first, 0, 10)
        self.train(second, 0, 10)
        first.on_run_end(10, "completed", results(10))
        second.on_run_end(10, "completed", results(10))

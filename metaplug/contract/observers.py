"""Run observers: what the training loop tells loggers (``metrics.jsonl``, TensorBoard...).

An observer is a class registered with ``register_observers``; the host constructs it
with no arguments for each run that names it (``[train] observers``, ``--log NAME``) and
calls the methods below in this order::

    on_run_start(run)
    on_train_metrics(step, metrics)        every train.log_every steps
    on_validation(step, metrics, best)     every train.val_every steps
    on_checkpoint(step, name)              before each checkpoint is written
    on_run_end(step, status, results)      always, last

Subclass :class:`RunObserver` and override the methods you need (the others do
nothing). Values are plain floats and JSON-ready dictionaries: an observer never sees a
framework tensor. An exception raised by an observer stops the run with one line that
names the observer (the last checkpoint stays loadable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_STATUSES: tuple[str, ...] = ("completed", "interrupted", "failed", "discarded")
"""How a run ended: trained and scored; stopped by Ctrl-C or SIGTERM (checkpointed); an error
after a checkpoint (the run can be resumed); an error in a new run before its first checkpoint,
whose files the host removes (remove yours too)."""


@dataclass(frozen=True)
class RunStart:
    """What an observer learns when a run starts or resumes."""

    run_dir: Path
    """The run directory; write your files in it (or in a folder of it)."""
    config: Mapping[str, Any]
    """The resolved configuration, as ``config.toml`` holds it (``config["train"]["iterations"]``...)."""
    step: int
    """The step training starts from: 0, or the resumed checkpoint's step."""
    iterations: int
    """The step training ends at (unless it stops early)."""
    problem: str
    """``"regression"`` or ``"classification"``."""

    @property
    def resumed(self) -> bool:
        """The run continues from a checkpoint: drop anything logged after :attr:`step`
        (a crash may have left rows that the resumed run logs again)."""
        return self.step > 0


class RunObserver:
    """Base class of run observers: every callback does nothing until overridden."""

    def on_run_start(self, run: RunStart) -> None:
        """Training starts (or resumes at ``run.step``): open files here."""

    def on_train_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every ``train.log_every`` steps and at the last step: the mean of each training
        metric (``loss``, ``accuracy``...) over the steps since the previous call, and
        ``elapsed``, the seconds of training so far."""

    def on_validation(self, step: int, metrics: Mapping[str, float], best: bool) -> None:
        """Every ``train.val_every`` steps: the mean of each metric over ``train.val_tasks``
        validation episodes, and ``elapsed``; ``best`` is true when the monitored metric
        improved (the run's ``best`` checkpoint is this step's)."""

    def on_checkpoint(self, step: int, name: str) -> None:
        """Checkpoint ``name`` (``"last"`` or ``"best"``) of ``step`` is about to be written:
        make everything logged so far durable (a resumed run continues after this step)."""

    def on_run_end(self, step: int, status: str, results: Mapping[str, Any]) -> None:
        """The run ended at ``step`` with ``status`` (one of :data:`RUN_STATUSES`); ``results``
        is ``results.json`` for a completed run (held-out test scores), else empty. Close files
        here; when ``status`` is ``"discarded"`` also remove what you wrote in the run directory."""


__all__ = ["RUN_STATUSES", "RunObserver", "RunStart"]

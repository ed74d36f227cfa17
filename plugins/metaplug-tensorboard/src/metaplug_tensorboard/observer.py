"""The run observer 'tensorboard': a run's metrics as TensorBoard event files (see :class:`TensorBoardObserver`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaplug.contract.observers import RunObserver, RunStart

FOLDER = "tensorboard"
"""The event files' folder inside the run directory."""


class TensorBoardObserver(RunObserver):
    """Writes TensorBoard event files into RUN_DIR/tensorboard/ (view: tensorboard --logdir runs/).

    Written with tensorboardX's SummaryWriter, which needs neither PyTorch nor TensorFlow:

    - train/<metric>: the training means of each logged row (train.log_every);
    - val/<metric>: each validation;
    - test/<metric> and test/<metric>_ci95: the held-out test scores (mean over episodes,
      95% interval) when the run completes, and the run's settings against them in the
      HParams dashboard;
    - the text "config": the resolved configuration.

    Events are flushed at each validation and checkpoint, and at least every 10 seconds. A
    resumed run purges the events after the checkpoint it continues from, as metrics.jsonl
    drops its rows, so that TensorBoard shows each step once; a run the host discards (it
    failed before its first checkpoint) removes its event files.
    """

    def __init__(self) -> None:
        self.writer: Any = None
        self.folder: Path | None = None
        self.earlier: set[str] = set()
        """The folder's files before this run started (a discarded run removes only its own)."""

    def on_run_start(self, run: RunStart) -> None:
        from tensorboardX import SummaryWriter

        self.config = dict(run.config)
        self.folder = Path(run.run_dir) / FOLDER
        self.earlier = set(os.listdir(self.folder)) if self.folder.is_dir() else set()
        # purge_step: events of steps this run logs (again, when it resumes) hide any earlier ones.
        # The suffix keeps a file written in the same second apart, and sorted after the earlier one.
        self.writer = SummaryWriter(
            logdir=str(self.folder),
            purge_step=run.step + 1,
            flush_secs=10,
            filename_suffix=f".step{run.step:09d}.{os.getpid()}",
        )
        if not run.resumed:
            self.writer.add_text("config", config_markdown(self.config), 0)

    def on_train_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._scalars("train", step, metrics)

    def on_validation(self, step: int, metrics: Mapping[str, float], best: bool) -> None:
        self._scalars("val", step, metrics)
        self.writer.flush()

    def on_checkpoint(self, step: int, name: str) -> None:
        self.writer.flush()

    def on_run_end(self, step: int, status: str, results: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            test = results.get("test") or {}
            scores = {k: v for k, v in test.items() if isinstance(v, Mapping) and v.get("mean") is not None}
            for name, stats in scores.items():
                self.writer.add_scalar(f"test/{name}", stats["mean"], step)
                if stats.get("ci95") is not None:
                    self.writer.add_scalar(f"test/{name}_ci95", stats["ci95"], step)
            if scores:
                self._hparams({f"test/{name}" for name in scores})
        finally:
            self.writer.close()
            self.writer = None
        if status == "discarded":
            self._remove_own_files()

    def _remove_own_files(self) -> None:
        """The run is discarded (it failed before its first checkpoint): remove the event files
        it wrote, and the folder when nothing else is in it."""
        assert self.folder is not None
        for name in set(os.listdir(self.folder)) - self.earlier:
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def _scalars(self, prefix: str, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            if name != "elapsed":
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def _hparams(self, metric_tags: set[str]) -> None:
        """The HParams dashboard's session: the configuration's scalars against the test scores
        (logged above as ``test/<metric>``, which the dashboard reads by tag)."""
        from tensorboardX.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(self.config).items()}
        for summary in hparams(values, dict.fromkeys(sorted(metric_tags), 0.0)):
            self.writer.file_writer.add_summary(summary)


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"algorithm.inner_lr": 0.01, "seed": 0, ...}``; ``None`` values are left out."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        elif value is not None:
            flat[key] = value
    return flat


def config_markdown(config: Mapping[str, Any]) -> str:
    """The configuration as a two-column Markdown table (TensorBoard's text dashboard renders it)."""
    rows = [f"| `{key}` | `{value}` |" for key, value in flatten(config).items()]
    return "\n".join(["| setting | value |", "| --- | --- |", *rows])

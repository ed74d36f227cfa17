"""The training loop: meta-train steps, logging, validation, checkpoints, resume and interrupts."""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from metaplug import __version__
from metaplug.errors import ConfigError, MetaplugError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment.components import Experiment, build, check
from metaplug.experiment.config import SETTINGS, ExperimentConfig, from_dict
from metaplug.experiment.evaluation import evaluate_episodes, summarize
from metaplug.experiment.files import write_json_atomic, write_text_atomic
from metaplug.experiment.metrics import MetricsLog, RunningMeans
from metaplug.experiment.progress import ProgressBar
from metaplug.experiment.tomlio import read_toml

CONFIG_FILE = "config.toml"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoint"


STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""Signals that make training checkpoint and stop after the current step."""


class TrainingInterrupted(MetaplugError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the CLI exits with status 128 + the
    signal's number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class TrainingDiverged(MetaplugError):
    """The training loss became NaN or infinite."""


def default_run_dir(cfg: ExperimentConfig, root: Path = Path("runs")) -> Path:
    """``runs/<timestamp>-<algorithm>-<tasks>-<backend>``, made unique with a suffix."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{cfg.algorithm.name}-{cfg.tasks.name}-{cfg.backend}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """The resolved configuration saved in a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a metaplug run directory (no {CONFIG_FILE})")
    return from_dict(read_toml(path))


def restore(run_dir: Path, device: str | None = None) -> tuple[Experiment, checkpoints.Checkpoint]:
    """Rebuild a run's components (on ``device`` instead of the configured one, if given)
    and load its latest checkpoint into the algorithm."""
    cfg = check(load_run_config(run_dir))
    if device is not None:
        cfg = replace(cfg, device=SETTINGS["device"].check("device", device))
    saved = checkpoints.load(Path(run_dir) / CHECKPOINT_DIR)
    experiment = build(cfg)
    try:
        experiment.algorithm.load_state_dict(saved.arrays)
    except MetaplugError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise checkpoints.CheckpointError(
            f"checkpoint in {run_dir} does not fit the configured model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return experiment, saved


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    results: dict[str, Any]


class Trainer:
    """Runs (or continues) one experiment in ``run_dir``; ``progress`` forces the progress bar
    on or off (default: on when stderr is a terminal)."""

    def __init__(self, experiment: Experiment, run_dir: Path, progress: bool | None = None) -> None:
        self.experiment = experiment
        self.cfg = experiment.config
        self.run_dir = Path(run_dir)
        self.progress_enabled = progress
        self.metrics = MetricsLog(self.run_dir)
        self.val_sampler = experiment.sampler("val") if self.cfg.train.val_every else None
        self.running = RunningMeans()
        self.step = 0
        self.elapsed_before = 0.0
        self.started = time.monotonic()
        self.stop_signal: int | None = None
        """The signal (SIGINT or SIGTERM) that asked training to stop, if any."""
        self.smoothed_loss: float | None = None

    # -- state ----------------------------------------------------------------

    def resume_from(self, saved: checkpoints.Checkpoint) -> None:
        """Continue from ``saved`` (the algorithm's arrays are already loaded)."""
        samplers = saved.record.get("samplers", {})
        self.experiment.train_sampler.load_state_dict(samplers["train"])
        if self.val_sampler is not None and samplers.get("val") is not None:
            self.val_sampler.load_state_dict(samplers["val"])
        progress = saved.record.get("progress", {})
        self.running = RunningMeans(progress.get("sums"), progress.get("count", 0))
        self.elapsed_before = float(progress.get("elapsed", 0.0))
        self.step = saved.step
        self.metrics.truncate(saved.step)

    def save_checkpoint(self) -> None:
        self.metrics.sync()
        record = {
            "samplers": {
                "train": self.experiment.train_sampler.state_dict(),
                "val": self.val_sampler.state_dict() if self.val_sampler is not None else None,
            },
            "progress": {**self.running.state(), "elapsed": self.elapsed()},
            "config": self.cfg.as_dict(),
            "versions": versions(self.experiment),
        }
        arrays = {name: np.asarray(value) for name, value in self.experiment.algorithm.state_dict().items()}
        checkpoints.save(self.run_dir / CHECKPOINT_DIR, checkpoints.Checkpoint(self.step, arrays, record))

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # -- loop -----------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train up to ``train.iterations``, then test on held-out tasks; write ``results.json``."""
        settings = self.cfg.train
        bar = ProgressBar(settings.iterations, start=self.step, enabled=self.progress_enabled)
        saved_at = self.step if checkpoints.exists(self.run_dir / CHECKPOINT_DIR) else None
        with interrupt_flag(self):
            self._train_to_the_end(bar, saved_at)
            results = self.final_results()  # a stop signal now only ends the run once scored
        write_json_atomic(self.run_dir / RESULTS_FILE, results)
        return TrainResult(self.run_dir, self.step, results)

    def _train_to_the_end(self, bar: ProgressBar, saved_at: int | None) -> None:
        """The training loop: stop after a step when a stop signal came, checkpointed."""
        settings = self.cfg.train
        try:
            while self.step < settings.iterations:
                metrics = self.train_step()
                shown = {"loss": self.smooth(metrics.get("loss", math.nan))}
                if self.step % settings.log_every == 0 or self.step == settings.iterations:
                    self.log_training()
                if settings.val_every and self.step % settings.val_every == 0:
                    shown["val"] = self.validate()["loss"]
                if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                bar.update(self.step, shown)
                if self.stop_signal is not None and self.step < settings.iterations:
                    if saved_at != self.step:
                        self.save_checkpoint()
                    how = "interrupted" if self.stop_signal == signal.SIGINT else "terminated"
                    raise TrainingInterrupted(
                        f"{how} at step {self.step}; checkpoint saved, continue with "
                        f"'metaplug train --resume {self.run_dir}'",
                        self.stop_signal,
                    )
            if saved_at != self.step:
                self.save_checkpoint()
        finally:
            bar.close()
            self.metrics.close()

    def train_step(self) -> dict[str, float]:
        batch = self.experiment.train_sampler.sample(self.cfg.train.meta_batch_size)
        metrics = {k: float(v) for k, v in self.experiment.algorithm.meta_train_step(batch).items()}
        self.step += 1
        if not all(math.isfinite(v) for v in metrics.values()):
            bad = ", ".join(f"{k} {v}" for k, v in metrics.items() if not math.isfinite(v))
            raise TrainingDiverged(
                f"training diverged at step {self.step} ({bad}); try a smaller learning rate (--lr, --inner-lr)"
            )
        self.running.add(metrics)
        return metrics

    def smooth(self, loss: float) -> float:
        """Exponential moving average of the training loss, for the progress bar only."""
        self.smoothed_loss = loss if self.smoothed_loss is None else 0.95 * self.smoothed_loss + 0.05 * loss
        return self.smoothed_loss

    def log_training(self) -> None:
        self.metrics.append(
            {"step": self.step, "split": "train", **self.running.means(), "elapsed": round(self.elapsed(), 3)}
        )
        self.running.reset()

    def validate(self) -> dict[str, float]:
        assert self.val_sampler is not None
        per_task = evaluate_episodes(
            self.experiment.algorithm,
            self.val_sampler,
            self.cfg.train.val_tasks,
            self.cfg.train.meta_batch_size,
            self.cfg.evaluation.steps,
        )
        means = {name: float(np.mean(values)) for name, values in per_task.items()}
        self.metrics.append({"step": self.step, "split": "val", **means, "elapsed": round(self.elapsed(), 3)})
        return means

    def final_results(self) -> dict[str, Any]:
        """Scores on ``train.test_tasks`` held-out episodes of the test split."""
        results: dict[str, Any] = {
            "step": self.step,
            "elapsed_s": round(self.elapsed(), 3),
            "problem": self.experiment.spec.problem,
        }
        tasks = self.cfg.train.test_tasks
        if tasks:
            per_task = evaluate_episodes(
                self.experiment.algorithm,
                self.experiment.sampler("test"),
                tasks,
                self.cfg.train.meta_batch_size,
                self.cfg.evaluation.steps,
            )
            results["test"] = {
                "split": "test",
                "episodes": tasks,
                "steps": self.cfg.evaluation.steps,
                "seed": self.cfg.seed,
                **summarize(per_task),
            }
        return results


@contextlib.contextmanager
def interrupt_flag(trainer: Trainer) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM (a scheduler's pre-emption) asks the trainer to
    checkpoint and stop after the current step; a second Ctrl-C interrupts immediately
    (repeated SIGTERMs, which schedulers may send to a whole process group, do not)."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_signal is None:
            trainer.stop_signal = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    try:
        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


def versions(experiment: Experiment) -> dict[str, str]:
    records = experiment.records
    return {
        "metaplug": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backend": records.backend.distribution,
        "algorithm": records.algorithm.distribution,
    }


def start(cfg: ExperimentConfig, run_dir: Path | None = None, progress: bool | None = None) -> Trainer:
    """Check ``cfg``, create the run directory and build a trainer for a new run."""
    cfg = check(cfg)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if checkpoints.exists(run_dir / CHECKPOINT_DIR):
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir"
        )
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"{run_dir} holds a run that saved no checkpoint; delete it or choose another --run-dir")
    experiment = build(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
    write_text_atomic(run_dir / CONFIG_FILE, experiment.config.to_toml())
    return Trainer(experiment, run_dir, progress)


def resume(
    run_dir: Path, iterations: int | None = None, progress: bool | None = None, device: str | None = None
) -> Trainer:
    """A trainer that continues the run in ``run_dir`` from its latest checkpoint (with
    ``iterations`` as the new length and on ``device``, when given)."""
    experiment, saved = restore(run_dir, device)
    cfg = experiment.config
    if iterations is not None:
        iterations = SETTINGS["train.iterations"].check("train.iterations", iterations)
        cfg = replace(cfg, train=replace(cfg.train, iterations=iterations))
        experiment.config = cfg
    if saved.step >= cfg.train.iterations:
        scored = "" if (Path(run_dir) / RESULTS_FILE).exists() else f", or score it with 'metaplug evaluate {run_dir}'"
        raise ConfigError(
            f"{run_dir} already finished {saved.step} of {cfg.train.iterations} iterations; "
            f"pass --iterations N (more than {saved.step}) to train further{scored}"
        )
    if iterations is not None or device is not None:
        write_text_atomic(Path(run_dir) / CONFIG_FILE, cfg.to_toml())
    trainer = Trainer(experiment, Path(run_dir), progress)
    trainer.resume_from(saved)
    return trainer

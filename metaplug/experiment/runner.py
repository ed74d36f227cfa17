"""The training loop: meta-train steps, observers, validation, best and last checkpoints,
early stopping, resume and interrupts."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from metaplug import __version__
from metaplug.contract.interfaces import TaskSampler
from metaplug.contract.observers import RunStart
from metaplug.errors import ConfigError, MetaplugError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment.components import Experiment, build, check, resolve_monitor
from metaplug.experiment.config import SETTINGS, ExperimentConfig, TrainSettings, defaults, from_dict, merge
from metaplug.experiment.evaluation import evaluate_episodes, summarize
from metaplug.experiment.files import write_bytes_atomic, write_json_atomic
from metaplug.experiment.memory import check_fits_in_memory
from metaplug.experiment.metrics import RunningMeans
from metaplug.experiment.observers import Observers
from metaplug.experiment.prefetch import Prefetcher
from metaplug.experiment.progress import ProgressBar
from metaplug.experiment.rundir import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RESULTS_FILE,
    claim_new_run_dir,
    discard_unsaved_run,
)
from metaplug.experiment.runlock import RunLock
from metaplug.experiment.selection import BestTracker
from metaplug.experiment.tomlio import encode, read_toml
from metaplug.plugins.discovery import registry

CHECKPOINTS: dict[str, str] = {"last": CHECKPOINT_DIR, "best": BEST_DIR}
"""The checkpoints of a run by name: the last (the training state ``--resume`` continues from)
and the best validation's."""

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


def load_run_config(run_dir: Path) -> ExperimentConfig:
    """The resolved configuration saved in a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a metaplug run directory (no {CONFIG_FILE})")
    return from_dict(merge(defaults(), read_toml(path)))


def choose_checkpoint(run_dir: Path, which: str | None = None) -> str:
    """``"best"`` or ``"last"``: ``which`` if given (it must exist), else best when the run has one."""
    run_dir = Path(run_dir)
    if which is None:
        return "best" if checkpoints.exists(run_dir / BEST_DIR) and not stale_best(run_dir) else "last"
    if which not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {which!r}; choose best or last")
    if which == "best" and not checkpoints.exists(run_dir / BEST_DIR) and run_dir.is_dir():
        raise ConfigError(f"{run_dir} has no best checkpoint (it never validated: train.val_every 0); use last")
    return which


def stale_best(run_dir: Path) -> bool:
    """The best checkpoint is later than the finished run's last step: it was written before an
    interruption, by steps that the resumed run, given fewer iterations, never trained again."""
    best, last = checkpoints.saved_step(run_dir / BEST_DIR), checkpoints.saved_step(run_dir / CHECKPOINT_DIR)
    finished = (run_dir / RESULTS_FILE).is_file()
    return finished and best is not None and last is not None and best > last


def restore(
    run_dir: Path, device: str | None = None, checkpoint: str = "last", devices: int | None = None
) -> tuple[Experiment, checkpoints.Checkpoint]:
    """Rebuild a run's components (on ``device`` and over ``devices`` devices instead of the
    configured ones, if given) and load its ``checkpoint`` (``last`` or ``best``) into the
    algorithm. The run's observers need not be installed: a resumed run's trainer looks them up."""
    saved_cfg = load_run_config(run_dir)  # its init_weights are in the checkpoint (the file may be gone)
    cfg = replace(check(replace(saved_cfg, init_weights=None), observers=False), init_weights=saved_cfg.init_weights)
    if device is not None:
        cfg = replace(cfg, device=SETTINGS["device"].check("device", device))
    if devices is not None:
        devices = SETTINGS["distributed.devices"].check("distributed.devices", devices)
        cfg = replace(cfg, distributed=replace(cfg.distributed, devices=devices))
    saved = checkpoints.load(Path(run_dir) / CHECKPOINTS[checkpoint])
    for name, array in saved.arrays.items():
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            raise checkpoints.CheckpointError(
                f"checkpoint of step {saved.step} in {run_dir} holds non-finite weights ({name!r} has NaN or "
                "infinite values); it cannot be evaluated or resumed"
            )
    experiment = build(cfg, initialise=False)
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


def split_sampler(experiment: Experiment, split: str) -> Any:
    """The sampler of ``split``; options that split cannot serve (more ways than its classes)
    are a one-line error that names the split."""
    try:
        return experiment.sampler(split)
    except ConfigError as exc:
        raise ConfigError(f"{split} split: {exc}") from exc


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
        self.observers = Observers.load(self.cfg.train.observers, registry())
        train = resolve_monitor(self.cfg.train, experiment.spec.problem)
        self.tracker = BestTracker(train.monitor, train.monitor_mode, train.patience, train.min_delta)
        self.stopped_early = False
        self.val_sampler = split_sampler(experiment, "val") if self.cfg.train.val_every else None
        self.test_sampler = split_sampler(experiment, "test") if self.cfg.train.test_tasks else None
        """Built before training, so that test episodes the split cannot provide fail at once."""
        self.batches = training_batches(experiment.train_sampler, self.cfg.train)
        self.running = RunningMeans()
        self.step = 0
        self.elapsed_before = 0.0
        self.started = time.monotonic()
        self.stop_signal: int | None = None
        """The signal (SIGINT or SIGTERM) that asked training to stop, if any."""
        self.smoothed_loss: float | None = None
        self.lock: RunLock | None = None
        """The run directory's lock, held from :func:`start` or :func:`resume` to the end of :meth:`run`."""
        self.new_run = False
        """This trainer created the run: if it fails before its first checkpoint, its files are removed."""
        self.created_dir = False
        """... and the run directory, which did not exist before."""
        self.exit_on_second_interrupt = False
        """A second Ctrl-C ends the process at once and quietly (the CLI); else it raises KeyboardInterrupt."""

    # -- state ----------------------------------------------------------------

    def resume_from(self, saved: checkpoints.Checkpoint) -> None:
        """Continue from ``saved`` (the algorithm's arrays are already loaded)."""
        try:
            samplers = saved.record["samplers"]
            self.batches.load_state_dict(samplers["train"])
            if self.val_sampler is not None and samplers.get("val") is not None:
                self.val_sampler.load_state_dict(samplers["val"])
            progress = saved.record.get("progress", {})
            self.running = RunningMeans(dict(progress.get("sums") or {}), int(progress.get("count", 0)))
            self.elapsed_before = float(progress.get("elapsed", 0.0))
            self.tracker.load_state(saved.record.get("selection", {}))
            self.stopped_early = bool(saved.record.get("stopped_early", False))
        except (KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError) as exc:
            raise checkpoints.CheckpointError(
                f"checkpoint in {self.run_dir} holds an invalid sampler or progress state "
                f"({type(exc).__name__}: {exc}); resume from an intact copy of the run"
            ) from exc
        self.step = saved.step

    def save_checkpoint(self) -> None:
        """The last checkpoint: everything a resumed run needs to continue bit for bit."""
        self.observers.checkpoint(self.step, "last")
        record = {
            "samplers": {
                "train": self.batches.state_dict(),
                "val": self.val_sampler.state_dict() if self.val_sampler is not None else None,
            },
            "progress": {**self.running.state(), "elapsed": self.elapsed()},
            "selection": self.tracker.state(),
            "stopped_early": self.stopped_early,
            "config": self.cfg.as_dict(),
            "versions": versions(self.experiment),
        }
        checkpoints.save(self.run_dir / CHECKPOINT_DIR, checkpoints.Checkpoint(self.step, self.arrays(), record))

    def save_best(self, scores: dict[str, float]) -> None:
        """The best checkpoint: the weights of this step and its validation scores."""
        self.observers.checkpoint(self.step, "best")
        record = {
            "validation": scores,
            "monitor": self.tracker.monitor,
            "monitor_mode": self.tracker.mode,
            "config": self.cfg.as_dict(),
            "versions": versions(self.experiment),
        }
        checkpoints.save(self.run_dir / BEST_DIR, checkpoints.Checkpoint(self.step, self.arrays(), record))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self.experiment.algorithm.state_dict().items()}

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # -- loop -----------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train up to ``train.iterations`` (or until early stopping), then test on held-out
        tasks; write ``results.json``. The run directory's lock is released at the end; a new
        run that fails before its first checkpoint leaves nothing behind."""
        try:
            return self._run()
        except BaseException:
            if self.new_run and self.lock is not None and not checkpoints.exists(self.run_dir / CHECKPOINT_DIR):
                discard_unsaved_run(self.run_dir, self.lock, remove_dir=self.created_dir)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> TrainResult:
        """Observers hear of every stage, and of the end however it comes."""
        settings = self.cfg.train
        saved_at = self.step if checkpoints.exists(self.run_dir / CHECKPOINT_DIR) else None
        start = RunStart(self.run_dir, self.cfg.as_dict(), self.step, settings.iterations, self.experiment.spec.problem)
        try:
            self.observers.run_start(start)
            with interrupt_flag(self):
                self._train_to_the_end(saved_at)
                results = self.final_results()  # a stop signal now only ends the run once scored
            self.write_results(results)
        except TrainingInterrupted:
            self.observers.run_end(self.step, "interrupted", {})
            raise
        except BaseException:
            unsaved = self.new_run and not checkpoints.exists(self.run_dir / CHECKPOINT_DIR)  # run() discards it
            with contextlib.suppress(MetaplugError):  # the first error is the one to report
                self.observers.run_end(self.step, "discarded" if unsaved else "failed", {})
            raise
        self.observers.run_end(self.step, "completed", results)
        return TrainResult(self.run_dir, self.step, results)

    def write_results(self, results: dict[str, Any]) -> None:
        """``results.json``, atomically."""
        write_json_atomic(self.run_dir / RESULTS_FILE, results)

    def _train_to_the_end(self, saved_at: int | None) -> None:
        """The training loop: stop after a step when a stop signal came, checkpointed."""
        settings = self.cfg.train
        bar = ProgressBar(settings.iterations, start=self.step, enabled=self.progress_enabled)
        try:
            while self.step < settings.iterations and not self.stopped_early:
                metrics = self.train_step()
                shown = {"loss": self.smooth(metrics.get("loss", math.nan))}
                if self.step % settings.log_every == 0 or self.step == settings.iterations:
                    self.log_training()
                if settings.val_every and self.step % settings.val_every == 0:
                    scores = self.validate()
                    shown["val"] = scores["loss"]
                    if "accuracy" in scores:
                        shown["val acc"] = scores["accuracy"]
                    self.stopped_early = self.tracker.exhausted
                if (settings.checkpoint_every and self.step % settings.checkpoint_every == 0) or self.stopped_early:
                    self.save_checkpoint()
                    saved_at = self.step
                bar.update(self.step, shown)
                stop = self.stop_after_step()
                if stop is not None and self.step < settings.iterations and not self.stopped_early:
                    if saved_at != self.step:
                        self.save_checkpoint()
                    how = "interrupted" if stop == signal.SIGINT else "terminated"
                    raise TrainingInterrupted(
                        f"{how} at step {self.step}; checkpoint saved, continue with "
                        f"'metaplug train --resume {self.run_dir}'",
                        stop,
                    )
            if saved_at != self.step:
                self.save_checkpoint()
        finally:
            if isinstance(self.batches, Prefetcher):
                self.batches.close()
            bar.close()

    def stop_after_step(self) -> int | None:
        """The stop signal to act on after the step just taken: the one received so far."""
        return self.stop_signal

    def train_step(self) -> dict[str, float]:
        batch = self.batches.sample(self.cfg.train.meta_batch_size)
        try:
            metrics = {k: float(v) for k, v in self.experiment.algorithm.meta_train_step(batch).items()}
        except (OverflowError, FloatingPointError, RuntimeError, ValueError) as exc:
            if not isinstance(exc, (OverflowError, FloatingPointError)) and "overflow" not in str(exc).lower():
                raise
            raise TrainingDiverged(
                f"training overflowed at step {self.step + 1} ({type(exc).__name__}: {str(exc).splitlines()[0]}) "
                f"with optimizer.lr {self.cfg.lr:g}; try a smaller learning rate (--lr, --inner-lr)"
            ) from exc
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
        self.observers.train_metrics(self.step, {**self.running.means(), "elapsed": self.elapsed()})
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
        best = self.tracker.update(self.step, means)
        if best:
            self.save_best(means)
        self.observers.validation(self.step, {**means, "elapsed": self.elapsed()}, best)
        return means

    def final_results(self) -> dict[str, Any]:
        """Scores on ``train.test_tasks`` held-out episodes of the test split, with the weights
        of the best checkpoint when the run has one (else the last)."""
        results: dict[str, Any] = {
            "step": self.step,
            "elapsed_s": round(self.elapsed(), 3),
            "problem": self.experiment.spec.problem,
            "stopped_early": self.stopped_early,
        }
        # the tracker, restored bit for bit on resume, says which step the best checkpoint must hold
        best_step = checkpoints.saved_step(self.run_dir / BEST_DIR)
        used = "best" if best_step is not None and best_step == self.tracker.best_step else "last"
        if used == "best":
            best = checkpoints.load(self.run_dir / BEST_DIR)
            self.experiment.algorithm.load_state_dict(best.arrays)
            results["best"] = {
                "step": best.step,
                "monitor": best.record.get("monitor"),
                "value": best.record.get("validation", {}).get(best.record.get("monitor")),
            }
        tasks = self.cfg.train.test_tasks
        if tasks and self.test_sampler is not None:
            per_task = evaluate_episodes(
                self.experiment.algorithm,
                self.test_sampler,
                tasks,
                self.cfg.train.meta_batch_size,
                self.cfg.evaluation.steps,
            )
            results["test"] = {
                "split": "test",
                "checkpoint": used,
                "checkpoint_step": results["best"]["step"] if used == "best" else self.step,
                "episodes": tasks,
                "steps": self.cfg.evaluation.steps,
                "seed": self.cfg.seed,
                **summarize(per_task),
            }
        return results


def training_batches(sampler: TaskSampler, settings: TrainSettings) -> TaskSampler | Prefetcher:
    """The training sampler, drawn ``train.prefetch`` meta-batches ahead in the background
    (by ``train.data_workers`` threads) unless that is 0."""
    if not settings.prefetch:
        return sampler
    return Prefetcher(sampler, settings.meta_batch_size, settings.prefetch, settings.data_workers)


@contextlib.contextmanager
def interrupt_flag(trainer: Trainer) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM (a scheduler's pre-emption) asks the trainer to
    checkpoint and stop after the current step; a second Ctrl-C interrupts immediately
    (repeated SIGTERMs, which schedulers may send to a whole process group, do not).
    With ``trainer.exit_on_second_interrupt`` (the CLI) the second Ctrl-C ends the process
    quietly, and once training stopped for a signal further Ctrl-Cs are ignored while it exits."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_signal is None:
            trainer.stop_signal = signum
        elif signum == signal.SIGINT:
            if trainer.exit_on_second_interrupt:
                stop_at_once(trainer)
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
            stopping = trainer.stop_signal is not None and trainer.exit_on_second_interrupt
            signal.signal(signum, signal.SIG_IGN if stopping and signum == signal.SIGINT else earlier)


def versions(experiment: Experiment) -> dict[str, str]:
    records = experiment.records
    return {
        "metaplug": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backend": records.backend.distribution,
        "algorithm": records.algorithm.distribution,
    }


def stop_at_once(trainer: Trainer) -> None:
    """End the process now, with one line and no traceback: the checkpoints already written
    stay intact, since each is complete or absent (``os._exit`` runs no clean-up that a
    third Ctrl-C could interrupt)."""
    where = f"; continue with 'metaplug train --resume {trainer.run_dir}'"
    if not checkpoints.exists(trainer.run_dir / CHECKPOINT_DIR):
        where = ""
    message = f"Error: interrupted again at step {trainer.step}; stopped at once, the last checkpoint is intact{where}"
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode("utf-8", "replace"))
    os._exit(128 + signal.SIGINT)


@contextlib.contextmanager
def startup_signals() -> Iterator[None]:
    """While a run starts up, SIGTERM stops it the way Ctrl-C does (with an exception, so that
    it cleans up) instead of killing the process outright."""

    def handler(signum: int, frame: Any) -> None:
        raise TrainingInterrupted("terminated while starting up, before the first step; nothing was saved", signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start(cfg: ExperimentConfig, run_dir: Path | None = None, progress: bool | None = None) -> Trainer:
    """Check ``cfg``, create and lock the run directory and build a trainer for a new run.

    A directory that holds a checkpoint is refused; one left by a run that died before its
    first checkpoint (no live writer holds its lock) is reused. Everything that can be
    checked before training is: the options, the val and test samplers, the memory an
    episode batch needs.
    """
    cfg = check(cfg)
    with startup_signals():
        run_dir, lock, created = claim_new_run_dir(cfg, run_dir)
        try:
            experiment = build(cfg, calibrate=cfg.distributed.workers == 1)
            check_fits_in_memory(experiment)
            write_bytes_atomic(run_dir / CONFIG_FILE, encode(experiment.config.to_toml()))
            trainer = Trainer(experiment, run_dir, progress)
        except BaseException:
            discard_unsaved_run(run_dir, lock, remove_dir=created)
            raise
    trainer.lock, trainer.new_run, trainer.created_dir = lock, True, created
    return trainer


def with_observers(cfg: ExperimentConfig, names: Sequence[str]) -> ExperimentConfig:
    """``cfg`` with the observers ``names`` added after its own (each name once)."""
    added = tuple(n for n in dict.fromkeys(names) if n not in cfg.train.observers)
    return replace(cfg, train=replace(cfg.train, observers=cfg.train.observers + added)) if added else cfg


def resume(
    run_dir: Path,
    iterations: int | None = None,
    progress: bool | None = None,
    device: str | None = None,
    observers: Sequence[str] = (),
    devices: int | None = None,
) -> Trainer:
    """A trainer that continues the run in ``run_dir`` from its last checkpoint (with
    ``iterations`` as the new length, on ``device`` and ``devices`` and with more
    ``observers``, when given); it holds the run directory's lock, so a run that is still
    training is refused untouched."""
    load_run_config(run_dir)  # a missing or foreign directory is named before any lock file is made
    lock = RunLock(Path(run_dir)).acquire()
    try:
        trainer = _resume_locked(Path(run_dir), iterations, progress, device, observers, devices)
    except BaseException:
        lock.release()
        raise
    trainer.lock = lock
    return trainer


def _resume_locked(
    run_dir: Path,
    iterations: int | None,
    progress: bool | None,
    device: str | None,
    observers: Sequence[str],
    devices: int | None,
) -> Trainer:
    experiment, saved = restore(run_dir, device, devices=devices)
    cfg = experiment.config
    if saved.record.get("stopped_early"):
        raise ConfigError(
            f"{run_dir} stopped early at step {saved.step} (validation stopped improving); "
            f"its best checkpoint is in {run_dir / BEST_DIR}: score it with 'metaplug evaluate {run_dir}'"
        )
    if iterations is not None:
        iterations = SETTINGS["train.iterations"].check("train.iterations", iterations)
        cfg = replace(cfg, train=replace(cfg.train, iterations=iterations))
    for name in observers:
        registry().get("observers", name)
    experiment.config = cfg = with_observers(cfg, observers)
    if saved.step >= cfg.train.iterations:
        scored = "" if (run_dir / RESULTS_FILE).exists() else f", or score it with 'metaplug evaluate {run_dir}'"
        raise ConfigError(
            f"{run_dir} already finished {saved.step} of {cfg.train.iterations} iterations; "
            f"pass --iterations N (more than {saved.step}) to train further{scored}"
        )
    trainer = Trainer(experiment, run_dir, progress)
    trainer.resume_from(saved)
    if iterations is not None or device is not None or devices is not None or observers:
        write_bytes_atomic(run_dir / CONFIG_FILE, encode(cfg.to_toml()))
    return trainer

"""Run directories: their files, creating one that no other run shares, claiming it for one
writer, and removing what a run that never saved a checkpoint wrote."""

from __future__ import annotations

import contextlib
import itertools
from datetime import datetime
from pathlib import Path

from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment.config import ExperimentConfig
from metaplug.experiment.metrics import FILENAME as METRICS_FILE
from metaplug.experiment.runlock import LOCK_FILE, RunLock

CONFIG_FILE = "config.toml"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoint"
"""The last checkpoint: the full training state that ``--resume`` continues from."""
BEST_DIR = "best"
"""The checkpoint of the best validation (weights, its step and scores), kept beside the last."""


def create_default_run_dir(cfg: ExperimentConfig, root: Path = Path("runs")) -> Path:
    """Create ``runs/<timestamp>-<algorithm>-<tasks>-<backend>`` and return it. The directory
    is created atomically, so runs started at the same moment never share one: a name taken
    by another run gets a suffix (``-2``, ``-3``...)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{cfg.algorithm.name}-{cfg.tasks.name}-{cfg.backend}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as exc:
        raise ConfigError(f"cannot create a run directory in {root}: {exc.strerror or exc}") from exc
    raise AssertionError("unreachable")


def claim_new_run_dir(cfg: ExperimentConfig, run_dir: Path | None) -> tuple[Path, RunLock, bool]:
    """The directory of a new run (``run_dir``, else a default one), created if needed and
    locked: ``(directory, its lock, whether it was created)``.

    A directory that holds a checkpoint is refused, and so is a ``config.toml`` of the user's;
    the files of a run that died before its first checkpoint (no live process holds its lock)
    are removed, so that the directory is used again.
    """
    if run_dir is None:
        run_dir, created = create_default_run_dir(cfg), True
    else:
        run_dir, created = Path(run_dir), not Path(run_dir).exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
    lock = RunLock(run_dir)
    ours = (run_dir / LOCK_FILE).exists()  # a run of this metaplug, not a folder of the user's
    try:
        lock.acquire()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    if checkpoints.exists(run_dir / CHECKPOINT_DIR):
        _give_up(lock, ours)
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir"
        )
    if (run_dir / CONFIG_FILE).exists() and not ours:
        _give_up(lock, ours)
        raise ConfigError(
            f"{run_dir} holds a {CONFIG_FILE} but no run; choose another --run-dir (pass a configuration with --config)"
        )
    for name in (CONFIG_FILE, METRICS_FILE, RESULTS_FILE):  # of a run that died before its first checkpoint
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    _remove_checkpoint_files(run_dir / BEST_DIR)  # its best validation, which no run continues
    return run_dir, lock, created


def _give_up(lock: RunLock, ours: bool) -> None:
    """Release ``lock`` without starting a run; remove the lock file if this claim made it."""
    if not ours:
        with contextlib.suppress(OSError):
            lock.path.unlink()
    lock.release()


def discard_unsaved_run(run_dir: Path, lock: RunLock, remove_dir: bool) -> None:
    """Remove what a new run wrote before its first checkpoint (so that the directory does
    not block a later ``train``), then release the lock; with ``remove_dir`` (the run created
    the directory) remove the directory too when nothing else is in it."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, METRICS_FILE, RESULTS_FILE):
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    for folder in (run_dir / CHECKPOINT_DIR, run_dir / BEST_DIR):
        _remove_checkpoint_files(folder)
    lock.release()
    if remove_dir and not any(p.name != LOCK_FILE for p in _entries(run_dir)):
        with contextlib.suppress(OSError):
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()


def _remove_checkpoint_files(folder: Path) -> None:
    """Remove a checkpoint folder's files (step files, pointer, temporary files), then the
    folder if nothing else is in it."""
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            if path.name.endswith(".tmp") or path.name.startswith("step-") or path.name == checkpoints.POINTER:
                path.unlink()
        folder.rmdir()


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []

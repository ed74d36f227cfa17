"""What ``metaplug train`` does about workers: join those a launcher started, or launch them
(``--nproc N``, ``distributed.workers``); ``--workers``/``--worker-index`` spell TensorFlow's
``TF_CONFIG``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from metaplug.contract.distributed import Workers, check_meta_batch
from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import runner
from metaplug.experiment import workers as scale_out
from metaplug.experiment.components import check
from metaplug.experiment.components import check_devices as check_backend_devices
from metaplug.experiment.config import SETTINGS, ExperimentConfig
from metaplug.experiment.files import write_bytes_atomic
from metaplug.experiment.rundir import CHECKPOINT_DIR, CONFIG_FILE
from metaplug.experiment.tomlio import encode
from metaplug.plugins.discovery import registry

CLUSTER_FLAGS: list[bool] = []
"""Set when ``--workers``/``--worker-index`` described the cluster (its backend must join it)."""


def set_cluster(cluster: str | None, index: int | None) -> None:
    """Set ``TF_CONFIG`` from ``--workers host:port,...`` and ``--worker-index i``."""
    CLUSTER_FLAGS.clear()
    if cluster is None and index is None:
        return
    if cluster is None or index is None:
        raise ConfigError("--workers and --worker-index go together (every worker's address, and this one's)")
    hosts = [host.strip() for host in cluster.split(",") if host.strip()]
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"--workers takes host:port addresses separated by commas, got {host!r}")
    if not 0 <= index < len(hosts):
        raise ConfigError(f"--worker-index must be 0 to {len(hosts) - 1} for {len(hosts)} --workers, got {index}")
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
    CLUSTER_FLAGS.append(True)


def joined(cfg: ExperimentConfig) -> Workers | None:
    """:func:`metaplug.experiment.workers.join`, refusing ``--workers`` that the backend ignores."""
    workers = scale_out.join(cfg)
    if workers is None and CLUSTER_FLAGS:
        raise ConfigError(
            f"--workers and --worker-index describe TensorFlow workers (TF_CONFIG), which backend {cfg.backend!r} "
            "does not use; start torch workers with torchrun (docs/user-guide.md, Scaling out)"
        )
    return workers


def launched(cfg: ExperimentConfig, argv: Sequence[str], nproc: int) -> SystemExit:
    """Launch ``nproc`` workers running ``metaplug argv`` (after checking that the meta-batch
    splits evenly over them): the exit with their status, to raise."""
    check_meta_batch(cfg.train.meta_batch_size, nproc)
    return SystemExit(scale_out.launch(cfg, argv, nproc))


def check_devices(cfg: ExperimentConfig, workers: Workers | None, nproc: int) -> None:
    """Several devices in one process (``distributed.devices``) need a backend that drives
    them, one process (not ``nproc`` workers, nor a launcher's) and a meta-batch that splits
    evenly over them."""
    devices = cfg.distributed.devices
    if devices == 1:
        return
    assert cfg.backend is not None
    check_backend_devices(registry().get("backends", cfg.backend), devices)
    count = workers.world_size if workers is not None else nproc
    if count > 1:
        raise ConfigError(
            f"distributed.devices = {devices} with {count} workers: train several processes of one device each "
            "(--nproc, torchrun, TF_CONFIG) or one process over several devices (--devices), not both"
        )
    check_meta_batch(cfg.train.meta_batch_size, devices, "devices")


def start(cfg: ExperimentConfig, run_dir: Path | None, progress: bool | None, argv: Sequence[str]) -> runner.Trainer:
    """A trainer for a new run: this process's worker's when a launcher started it (a
    restarted group continues ``run_dir``'s last checkpoint), one process's when one worker
    is asked for; for more, launch them running ``metaplug argv`` and exit with their status."""
    cfg = check(cfg)
    workers = joined(cfg)
    check_devices(cfg, workers, cfg.distributed.workers)
    if workers is None:
        if cfg.distributed.workers > 1:
            raise launched(cfg, argv, cfg.distributed.workers)
        return runner.start(cfg, run_dir, progress)
    if workers.restarted and run_dir is not None and checkpoints.exists(run_dir / CHECKPOINT_DIR):
        return scale_out.resume(run_dir, None, progress, None, workers)
    return scale_out.start(cfg, run_dir, progress, workers)


def resume(
    run_dir: Path,
    iterations: int | None,
    progress: bool | None,
    device: str | None,
    nproc: int | None,
    argv: Sequence[str],
    observers: Sequence[str] = (),
    devices: int | None = None,
) -> runner.Trainer:
    """A trainer continuing ``run_dir`` on ``--nproc`` workers (default: as many as it ran on)
    of ``--devices`` devices each (default: as many as it ran on), with more ``observers``
    when given."""
    cfg = runner.load_run_config(run_dir)
    if device is not None:
        cfg = replace(cfg, device=device)
    if devices is not None:
        devices = SETTINGS["distributed.devices"].check("--devices", devices)
        cfg = replace(cfg, distributed=replace(cfg.distributed, devices=devices))
    wanted = cfg.distributed.workers if nproc is None else SETTINGS["distributed.workers"].check("--nproc", nproc)
    workers = joined(cfg)
    check_devices(cfg, workers, wanted)
    if workers is not None:
        return scale_out.resume(run_dir, iterations, progress, device, workers, observers)
    if wanted > 1:
        raise launched(cfg, argv, wanted)
    trainer = runner.resume(run_dir, iterations, progress, device, observers, devices)
    if trainer.cfg.distributed.workers != 1:  # ran on several workers before
        trainer.cfg = trainer.experiment.config = replace(
            trainer.cfg, distributed=replace(trainer.cfg.distributed, workers=1)
        )
        write_bytes_atomic(Path(run_dir) / CONFIG_FILE, encode(trainer.cfg.to_toml()))
    return trainer


def leads(trainer: runner.Trainer) -> bool:
    """Whether this process speaks for the run (one process, or rank 0)."""
    workers = getattr(trainer, "workers", None)
    return workers is None or workers.rank == 0


def leave(trainer: runner.Trainer, status: int) -> None:
    """End a worker's process with ``status`` once its run is over (files written, the
    workers closed): without the interpreter's teardown, where a framework's communication
    threads can still abort the process (gloo: ``terminate called without an active
    exception``) after the run succeeded. One process: nothing (the caller returns)."""
    if getattr(trainer, "workers", None) is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

"""Training on several workers (processes or machines): launching them, splitting each
meta-batch and each evaluation over them, and letting only rank 0 write.

Every worker builds the same experiment from the same seed and draws the same global
meta-batches; :class:`ShardedAlgorithm` gives each its slice and the backend's
:class:`~metaplug.contract.distributed.Workers` average the meta-gradients, so the
meta-parameters stay identical on every worker and equal one process's. The backend-neutral
contract is :mod:`metaplug.contract.distributed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract.distributed import Workers, check_meta_batch, gather_tasks, refuse_dependent_tasks, shard
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import runner
from metaplug.experiment.components import build, check
from metaplug.experiment.config import ExperimentConfig
from metaplug.experiment.files import write_bytes_atomic
from metaplug.experiment.observers import Observers
from metaplug.experiment.rundir import BEST_DIR, CONFIG_FILE
from metaplug.experiment.tomlio import encode
from metaplug.plugins.discovery import registry

FAILED = ""
"""What rank 0 broadcasts instead of the run directory when it could not start the run."""


class WorkerStopped(SystemExit):
    """Rank 0 could not start the run and said why; the other workers exit quietly."""

    def __init__(self) -> None:
        super().__init__(1)


def backend_class(backend: str | None) -> Any:
    """The registered class of ``backend``, for its ``join_workers``/``launch_workers``."""
    assert backend is not None
    return registry().get("backends", backend).load()


def join(cfg: ExperimentConfig) -> Workers | None:
    """The workers this process is one of when a launcher started it (torchrun's variables,
    ``TF_CONFIG``), else ``None``."""
    cls = backend_class(cfg.backend)
    joining = getattr(cls, "join_workers", None)
    if joining is None:
        return None
    return joining(cfg.distributed.timeout_s, cfg.device)


def default_threads(nproc: int) -> int:
    """Threads per worker when the configuration sets none: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // nproc)


def launch(cfg: ExperimentConfig, argv: Sequence[str], nproc: int) -> int:
    """Start ``nproc`` local workers running ``metaplug argv`` with the backend's launcher;
    their exit status."""
    cls = backend_class(cfg.backend)
    launching = getattr(cls, "launch_workers", None)
    if launching is None:
        raise ConfigError(f"backend {cfg.backend!r} cannot train on several workers (distributed.workers {nproc})")
    threads = cfg.distributed.threads or default_threads(nproc)
    return int(launching(nproc, list(argv), threads, cfg.distributed.timeout_s))


def with_world_size(cfg: ExperimentConfig, workers: Workers) -> ExperimentConfig:
    """``cfg`` recording the launched world size (checked against the meta-batch)."""
    check_meta_batch(cfg.train.meta_batch_size, workers.world_size)
    return replace(cfg, distributed=replace(cfg.distributed, workers=workers.world_size))


class ShardedAlgorithm:
    """An algorithm that trains and evaluates its worker's slice of every batch, averaging the
    metrics and gathering per-task results over the workers; everything else is the
    wrapped algorithm's."""

    def __init__(self, algorithm: Any, workers: Workers, problem: str) -> None:
        self.inner = algorithm
        self.workers = workers
        self.problem = problem
        self.trainer: runner.Trainer | None = None
        """Whose stop signal the workers agree on at every step."""
        self.agreed_stop: int | None = None
        """The stop signal some worker had received when the last step's metrics were gathered."""
        refuse_dependent_tasks(algorithm)
        workers.average_gradients(algorithm)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One step on this worker's tasks; the metrics are the means over all tasks. The
        workers also agree on stopping: a stop signal on any of them, gathered with the metrics,
        stops all after this step."""
        metrics = self.inner.meta_train_step(shard(batch, self.workers.rank, self.workers.world_size))
        keys = sorted(metrics)
        stop = self.trainer.stop_signal if self.trainer is not None else None
        rows = self.workers.all_gather(np.array([*(metrics[k] for k in keys), stop or 0], dtype=np.float64))
        signals = [int(s) for s in rows[:, -1] if s]
        self.agreed_stop = signals[0] if signals else None
        if self.trainer is not None and self.trainer.stop_signal is None:
            self.trainer.stop_signal = self.agreed_stop
        return {k: float(np.mean(rows[:, i])) for i, k in enumerate(keys)}

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        """Per-task metrics of the whole batch, each worker evaluating its slice."""
        part = shard(batch, self.workers.rank, self.workers.world_size)
        keys = ("loss", "loss_before") + (("accuracy",) if self.problem == "classification" else ())
        found = self.inner.evaluate(part, steps=steps) if part.num_tasks else {}
        result = {}
        for key in keys:
            values = np.asarray(found.get(key, np.full(part.num_tasks, np.nan)), dtype=np.float64).reshape(-1)
            result[key] = gather_tasks(self.workers, values, batch.num_tasks)
        return result


class WorkerTrainer(runner.Trainer):
    """A :class:`~metaplug.experiment.runner.Trainer` on one of several workers: only rank 0
    has observers (``metrics.jsonl``, TensorBoard...), writes the checkpoints and
    ``results.json`` and shows progress."""

    workers: Workers

    @classmethod
    def adopt(cls, trainer: runner.Trainer, workers: Workers) -> WorkerTrainer:
        """``trainer`` (built, resumed or not) turned into one worker's."""
        self = cls.__new__(cls)
        self.__dict__.update(trainer.__dict__)
        self.workers = workers
        sharded = ShardedAlgorithm(self.experiment.algorithm, workers, self.experiment.spec.problem)
        sharded.trainer = self
        self.experiment.algorithm = sharded
        if workers.rank != 0:
            self.observers = Observers([])
            self.progress_enabled = False
        return self

    def stop_after_step(self) -> int | None:
        """The stop signal gathered with the last step's metrics, so that every worker stops
        after the same step: one that arrives after the gathering waits for the next step's."""
        return self.experiment.algorithm.agreed_stop

    def save_checkpoint(self) -> None:
        """Rank 0 saves; every worker waits until it has (so none exits before the save)."""
        if self.workers.rank == 0:
            super().save_checkpoint()
        self.workers.all_gather(np.zeros(1))

    def save_best(self, scores: dict[str, float]) -> None:
        """Rank 0 saves (every worker finds the same best step: the scores are gathered)."""
        if self.workers.rank == 0:
            super().save_best(scores)
        self.workers.all_gather(np.zeros(1))

    def final_results(self) -> dict[str, Any]:
        """As one process's; every worker first checks that it sees rank 0's best checkpoint,
        whose weights the test uses."""
        seen = checkpoints.saved_step(self.run_dir / BEST_DIR)
        steps = self.workers.all_gather(np.array([-1.0 if seen is None else float(seen)]))[:, 0]
        if len(set(steps.tolist())) > 1:
            raise ConfigError(
                f"the workers do not all see the best checkpoint rank 0 wrote in {self.run_dir}; "
                "put the run directory on a file system that every machine shares"
            )
        return super().final_results()

    def write_results(self, results: dict[str, Any]) -> None:
        if self.workers.rank == 0:
            super().write_results(results)

    def run(self) -> runner.TrainResult:
        try:
            return super().run()
        finally:
            self.workers.close()


def start(cfg: ExperimentConfig, run_dir: Path | None, progress: bool | None, workers: Workers) -> WorkerTrainer:
    """A new run on ``workers``: rank 0 claims (and locks) the run directory and tells the
    others where it is; every worker builds the same experiment from the seed."""
    cfg = with_world_size(check(cfg), workers)
    if workers.rank == 0:
        try:
            lead = runner.start(cfg, run_dir, progress)
        except BaseException:
            workers.broadcast_text(FAILED)
            raise
        workers.broadcast_text(str(lead.run_dir))
        return WorkerTrainer.adopt(lead, workers)
    path = workers.broadcast_text(FAILED)
    if path == FAILED:
        raise WorkerStopped()
    return WorkerTrainer.adopt(runner.Trainer(build(cfg), Path(path), False), workers)


def resume(
    run_dir: Path,
    iterations: int | None,
    progress: bool | None,
    device: str | None,
    workers: Workers,
    observers: Sequence[str] = (),
) -> WorkerTrainer:
    """Continue the run in ``run_dir`` on ``workers`` (as many as before or not): rank 0 locks
    it and records the new world size; every worker loads its last checkpoint."""
    run_dir = Path(run_dir)
    if workers.rank == 0:
        try:
            lead = runner.resume(run_dir, iterations, progress, device, observers)
            cfg = with_world_size(lead.cfg, workers)
            if cfg != lead.cfg:
                lead.cfg = lead.experiment.config = cfg
                write_bytes_atomic(run_dir / CONFIG_FILE, encode(cfg.to_toml()))
        except BaseException:
            workers.broadcast_text(FAILED)
            raise
        workers.broadcast_text(str(run_dir))
        return WorkerTrainer.adopt(lead, workers)
    if workers.broadcast_text(FAILED) == FAILED:
        raise WorkerStopped()
    experiment, saved = runner.restore(run_dir, device)
    cfg = with_world_size(experiment.config, workers)
    if iterations is not None:
        cfg = replace(cfg, train=replace(cfg.train, iterations=iterations))
    experiment.config = cfg
    trainer = WorkerTrainer.adopt(runner.Trainer(experiment, run_dir, False), workers)
    trainer.resume_from(saved)
    return trainer

"""Data-parallel training over several processes: what the host asks of a backend's workers.

A backend that trains on several processes (or machines) gives its ``Backend`` class two
optional classmethods (see "Scaling out" in ``docs/hooks.md``):

- ``join_workers(timeout_s)``: the :class:`Workers` this process is one of when a launcher
  started it (``torchrun``'s variables, ``TF_CONFIG``), else ``None``;
- ``launch_workers(nproc, argv, timeout_s)``: start ``nproc`` local worker processes running
  ``metaplug`` with ``argv`` through the framework's launcher and return their exit status.

The host keeps the semantics, the same on every backend: every worker draws the same
global meta-batch from identically seeded samplers and trains on its contiguous slice
(:func:`task_slice`); the outer optimizer averages the meta-gradients over workers before
each step (:meth:`Workers.average_gradients`), so every worker holds the same
meta-parameters; evaluation episodes are split the same way and gathered in order; only
rank 0 writes files.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError, MetaplugError

DEFAULT_TIMEOUT_S = 300.0
"""Seconds a worker waits for the others in a collective before the run stops."""


class WorkerError(MetaplugError):
    """Another worker died, or did not answer within the timeout: the run stops."""


def lost_workers(engine: str, timeout_s: float, detail: str) -> WorkerError:
    """The one-line error of a collective that failed (``detail``: the engine's first line)."""
    return WorkerError(
        f"a worker of this run stopped or did not answer within distributed.timeout_s = {timeout_s:g} s "
        f"({engine}: {detail}); resume from the last checkpoint with 'metaplug train --resume RUN_DIR'"
    )


@runtime_checkable
class Workers(Protocol):
    """This process's place among the workers of one run, and the collectives it needs.

    ``rank`` is ``0 .. world_size - 1``; rank 0 writes the run's files. Every method is
    collective: all workers call it in the same order. A worker that died or does not answer
    within the timeout makes the call raise :class:`~metaplug.errors.MetaplugError` with one
    line that says so.
    """

    rank: int
    world_size: int
    name: str
    """The engine, for messages (``"torch.distributed (gloo)"``)."""
    restarted: bool
    """The launcher restarted this group after a failure (``torchrun --max-restarts``): the
    run continues from its run directory's last checkpoint."""
    reduce_seconds: float
    """Seconds spent so far averaging gradients (for ``metaplug bench``)."""

    def average_gradients(self, algorithm: Any) -> None:
        """Make ``algorithm``'s outer optimizer average the meta-gradients over the workers
        (an all-reduce) before each step (the host has refused, with
        :func:`refuse_dependent_tasks`, an algorithm whose tasks depend on each other)."""
        ...

    def all_gather(self, values: np.ndarray) -> np.ndarray:
        """Every worker's float64 1-D ``values`` (the same length on all), stacked by rank:
        shape ``(world_size, n)``."""
        ...

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` on every worker."""
        ...

    def close(self) -> None:
        """Leave the group (idempotent)."""
        ...


def task_slice(num_tasks: int, rank: int, world_size: int) -> slice:
    """The contiguous tasks of ``rank`` among ``num_tasks`` (the first ``num_tasks % world_size``
    ranks take one more), as :func:`numpy.array_split` cuts them."""
    base, extra = divmod(num_tasks, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def shard(batch: EpisodeBatch, rank: int, world_size: int) -> EpisodeBatch:
    """The tasks of ``batch`` that ``rank`` trains or evaluates (:func:`task_slice`)."""
    s = task_slice(batch.num_tasks, rank, world_size)
    return EpisodeBatch(
        batch.support_x[s],
        batch.support_y[s],
        batch.query_x[s],
        batch.query_y[s],
        batch.problem,
        None if batch.classes is None else batch.classes[s],
        {k: v[s] for k, v in batch.params.items()},
        batch.first_task + s.start,
    )


def check_meta_batch(meta_batch_size: int, world_size: int, parts: str = "workers") -> None:
    """Meta-training needs the same number of tasks on every worker (or device: ``parts``)
    so that the mean of their mean gradients is the global mean: ``meta_batch_size``
    divisible by their number."""
    if meta_batch_size % world_size:
        raise ConfigError(
            f"train.meta_batch_size {meta_batch_size} cannot be split evenly over {world_size} {parts}; "
            f"use a multiple of {world_size}"
        )


def gather_tasks(workers: Workers, values: np.ndarray, num_tasks: int) -> np.ndarray:
    """The per-task ``values`` of every worker's :func:`task_slice` of ``num_tasks`` tasks, in
    task order (what one process evaluating all of them gives)."""
    longest = task_slice(num_tasks, 0, workers.world_size)
    size = longest.stop - longest.start
    padded = np.full(size, np.nan)
    padded[: len(values)] = values
    rows = workers.all_gather(padded)
    parts = []
    for rank in range(workers.world_size):
        s = task_slice(num_tasks, rank, workers.world_size)
        parts.append(rows[rank, : s.stop - s.start])
    return np.concatenate(parts)


def refuse_dependent_tasks(algorithm: Any) -> None:
    """Reptile's published inner loop (Adam state carried from task to task) and its
    mini-batch draws (numbered task by task in meta-batch order) chain the tasks of a
    meta-batch: split over workers they would not give one process's result."""
    options = getattr(algorithm, "options", None)
    if getattr(options, "inner_optimizer", None) == "adam":
        raise ConfigError(
            f"{algorithm.name} with inner_optimizer 'adam' carries the inner Adam state from task to task within "
            "a meta-batch, so its tasks cannot be split over workers; use inner_optimizer 'sgd' or one worker"
        )
    batches = getattr(algorithm, "batches", None)
    if getattr(batches, "enabled", False):
        raise ConfigError(
            f"{algorithm.name} with inner_batch_size or evaluation_batch_size draws mini-batches task by task in "
            "meta-batch order, so its tasks cannot be split over workers; leave them unset or use one worker"
        )

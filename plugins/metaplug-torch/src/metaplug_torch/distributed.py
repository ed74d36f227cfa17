"""Data-parallel meta-training on ``torch.distributed``: workers started by ``torchrun``
(or ``metaplug train --nproc N``, which runs torchrun's launcher in-process), gloo on CPU,
NCCL on GPUs. The host's contract: :mod:`metaplug.contract.distributed`."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from metaplug.contract.distributed import lost_workers
from metaplug.errors import ConfigError, MetaplugError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""Set by torchrun (and any launcher following its ``env://`` convention) for every worker."""


def attempt_store(timeout_s: float) -> dict[str, Any]:
    """``init_process_group``'s store, rank and world size for workers of a torchrun agent that
    hosts the store (``TORCHELASTIC_USE_AGENT_STORE``): its store seen through a prefix of
    the attempt (``TORCHELASTIC_RESTART_COUNT``), else nothing (``env://`` as it is).

    torchrun keeps one store for every attempt of a group, and ``env://`` reads it without
    a prefix, so the workers of a restarted group can read the addresses that the dead
    group's workers published and fail to connect to them (pytorch/pytorch#135712), which
    made ``--max-restarts`` restarts fail at random. Before torch shared the agent's store,
    ``env://`` prefixed each attempt the same way."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    world_size = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )
    prefixed = dist.PrefixStore(f"/metaplug/attempt_{attempt}", store)
    return {"store": prefixed, "rank": int(os.environ["RANK"]), "world_size": world_size}


class Workers:
    """This process's place in a ``torch.distributed`` process group (``env://``)."""

    def __init__(self, timeout_s: float, device: str | None) -> None:
        self.timeout_s = float(timeout_s)
        use_nccl = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
        self.engine = "nccl" if use_nccl else "gloo"
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = torch.device("cuda") if use_nccl else torch.device("cpu")
        self.broken = False
        """A collective failed: the group is not waited for when leaving."""
        with self.collective():
            dist.init_process_group(self.engine, timeout=timedelta(seconds=self.timeout_s), **attempt_store(timeout_s))
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.name = f"torch.distributed ({self.engine})"
        self.restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        self.reduce_seconds = 0.0

    @classmethod
    def join(cls, timeout_s: float, device: str | None) -> Workers | None:
        """The workers this process is one of, when a launcher set torchrun's variables."""
        if not all(name in os.environ for name in LAUNCHER_VARIABLES):
            return None
        return cls(timeout_s, device)

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """A failed collective (a dead peer, a timeout) as one-line :class:`WorkerError`."""
        try:
            yield
        except (RuntimeError, ValueError, OSError) as exc:
            if isinstance(exc, MetaplugError):
                raise
            self.broken = True
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise lost_workers(f"torch.distributed ({self.engine})", self.timeout_s, detail[:200]) from None

    # -- the contract -------------------------------------------------------------------
    def average_gradients(self, algorithm: Any) -> None:
        """Before each ``step`` of the algorithm's outer optimizer, replace every gradient with
        its mean over the workers: one all-reduce of all gradients, flattened."""
        optimizer = getattr(algorithm, "optimizer", None)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"algorithm {getattr(algorithm, 'name', type(algorithm).__name__)!r} has no torch outer optimizer "
                "(algorithm.optimizer) whose gradients metaplug can average over workers"
            )
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: self._all_reduce(opt))

    def _all_reduce(self, optimizer: torch.optim.Optimizer) -> None:
        started = time.perf_counter()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self.device) for p in params]
        )
        with self.collective():
            dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            size = p.numel()
            if p.grad is not None:
                p.grad.copy_(flat[offset : offset + size].view_as(p))
            offset += size
        self.reduce_seconds += time.perf_counter() - started

    def all_gather(self, values: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)
        rows = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with self.collective():
            dist.all_gather(rows, tensor)
        return torch.stack(rows).cpu().numpy()

    def broadcast_text(self, text: str) -> str:
        box: list[Any] = [text]
        with self.collective():
            dist.broadcast_object_list(box, src=0, device=self.device)
        return str(box[0])

    def close(self) -> None:
        """Wait for the others (a worker that leaves first can abort gloo's threads in the
        others), unless a collective failed, then leave the group."""
        if dist.is_initialized():
            with contextlib.suppress(RuntimeError, ValueError):
                if not self.broken:
                    dist.barrier()
                dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str], threads: int, timeout_s: float = 300.0) -> int:
    """Run ``metaplug argv`` on ``nproc`` local workers with torchrun's launcher
    (``torch.distributed.launcher``, a c10d rendezvous on a free local port) and
    ``threads`` threads each; the first failing worker's exit status (0 when all succeed).
    SIGTERM or Ctrl-C reach every worker, which checkpoint and stop; when one worker
    fails the launcher stops the others at once (``timeout_s`` is not needed)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"metaplug-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "metaplug", *argv)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        return next((c for c in codes if c > 0), 1)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0

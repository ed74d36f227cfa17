"""The ``torch`` backend: device, seeding, episode tensors and the standard models."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaplug.contract.allocator import keep_freed_memory
from metaplug.contract.interfaces import EpisodeBatch, ModelSpec
from metaplug.contract.threads import ENV, ThreadChoice, choose_threads
from metaplug.errors import ConfigError
from metaplug_torch import models, weights

LIGHT_PARAMETERS = 100_000
"""Models without convolutions and with fewer weights than this run on one thread by
default: on 2 cores the sinusoid MLP (1 761 weights) is as fast on one thread as on two
when the machine is quiet and several times faster when it is busy (docs/benchmarks.md)."""


def is_light(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a model too small for several threads (see :data:`LIGHT_PARAMETERS`)."""
    if any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in module.modules()):
        return False
    return sum(p.numel() for p in module.parameters()) < LIGHT_PARAMETERS


@dataclass(frozen=True)
class Episodes:
    """An :class:`~metaplug.contract.interfaces.EpisodeBatch` as tensors on one device."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


class Backend:
    """PyTorch on ``device`` (default: ``cuda`` when available, else ``cpu``).

    :param threads: torch's intra-op threads (``torch.set_num_threads``, process-wide);
        ``None``: ``METAPLUG_THREADS`` or chosen for the machine and its load
        (:func:`metaplug.contract.threads.choose_threads`), and 1 once a model as small as
        the sinusoid MLP is seen (:meth:`fit_threads`). :attr:`threads` says what was chosen and why.
        :attr:`allocator` says whether freed memory is kept for reuse
        (:func:`metaplug.contract.allocator.keep_freed_memory`, process-wide).
    """

    name = "torch"
    models: tuple[str, ...] = tuple(models.BUILDERS)
    batching_modes: tuple[str, ...] = ("auto", "vectorized", "loop", "reference")
    export_formats: tuple[str, ...] = ("torch-export", "onnx")
    """What ``AdaptedModel.export`` writes (see :mod:`metaplug_torch.export`)."""
    weight_formats: tuple[str, ...] = weights.FORMATS
    """Files :meth:`read_weights` reads for ``--init-weights``: torch state dicts."""

    def __init__(self, device: str | None = None, threads: int | None = None) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"invalid torch device {device!r}: {exc}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} requested but {torch.cuda.device_count()} CUDA device(s) "
                f"are visible, numbered from 0"
            )
        self._threads_requested = threads is not None
        self.threads: ThreadChoice = choose_threads(threads)
        torch.set_num_threads(self.threads.threads)
        self.allocator = keep_freed_memory()

    def fit_threads(self, module: torch.nn.Module) -> None:
        """One thread for a model too small to split its operations (no convolution, fewer
        than :data:`LIGHT_PARAMETERS` weights), unless the count was given (argument or
        ``METAPLUG_THREADS``). The algorithms call it with their model."""
        if self._threads_requested or self.threads.reason == ENV:
            return
        if is_light(module):
            self.threads = choose_threads(light=True)
            torch.set_num_threads(self.threads.threads)

    def peak_gpu_mb(self) -> float | None:
        """Peak memory allocated by torch on :attr:`device` in MiB (``torch.cuda.max_memory_allocated``);
        ``None`` on the CPU."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def dense_gflop_per_s(self, repeats: int = 5) -> float:
        """The float32 rate of dense arithmetic on :attr:`device` with the current threads:
        the better of a 1024-square matrix product and a 3x3 convolution (32 maps of 64x28x28
        to 64 channels), each the best of ``repeats`` (``metaplug bench``'s compute floor).
        Both, because they run on different kernels: on an AMD CPU torch's matrix product
        (MKL) reached 110 GFLOP/s and its convolutions (oneDNN) 240 (docs/benchmarks.md)."""
        a = torch.rand(1024, 1024, device=self.device)
        maps, kernel = torch.rand(32, 64, 28, 28, device=self.device), torch.rand(64, 64, 3, 3, device=self.device)
        product = _best_seconds(lambda: a @ a, repeats, self.device)
        convolution = _best_seconds(lambda: torch.nn.functional.conv2d(maps, kernel, padding=1), repeats, self.device)
        return max(2 * 1024**3 / product, 2 * maps.numel() * 64 * 9 / convolution) / 1e9

    @classmethod
    def join_workers(cls, timeout_s: float, device: str | None = None) -> Any:
        """The :class:`~metaplug_torch.distributed.Workers` this process is one of when a launcher
        started it, else ``None`` (see :mod:`metaplug.contract.distributed`)."""
        from metaplug_torch.distributed import Workers

        return Workers.join(timeout_s, device)

    @classmethod
    def launch_workers(cls, nproc: int, argv: Sequence[str], threads: int, timeout_s: float) -> int:
        """Run ``metaplug argv`` on ``nproc`` local workers; their exit status."""
        from metaplug_torch.distributed import launch

        return launch(nproc, argv, threads, timeout_s)

    def seed(self, seed: int) -> None:
        """Seed torch's generators (CPU and every CUDA device)."""
        torch.manual_seed(int(seed))

    def tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``array`` on the device; floating arrays become ``dtype`` (default float32)."""
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # torch warns on read-only arrays (e.g. broadcast views)
            array = array.copy()
        t = torch.from_numpy(array)
        if t.is_floating_point():
            t = t.to(dtype or torch.float32)
        return t.to(self.device)

    def to_tensors(self, batch: EpisodeBatch, dtype: torch.dtype | None = None) -> Episodes:
        """The batch on the device: inputs and regression targets as ``dtype``, labels int64."""
        return Episodes(
            *(self.tensor(a, dtype) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
        )

    def build_model(self, spec: ModelSpec) -> torch.nn.Module:
        """A freshly initialised standard model (``mlp``, ``conv4`` or ``resnet12``) on the device."""
        return models.builder(spec.name).build(self, spec)

    @staticmethod
    def read_weights(path: str | Path) -> dict[str, np.ndarray]:
        """A torch state dict saved with ``torch.save``, read with ``weights_only=True``, as
        numpy arrays by name (see :mod:`metaplug_torch.weights`)."""
        return weights.read_weights(path)


def _best_seconds(compute: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    """The shortest of ``repeats`` runs of ``compute`` on ``device`` (after one that warms up), in seconds."""
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        compute().sum().item()
        best = min(best, time.perf_counter() - began)
    return best

"""The ``torch`` backend: device, seeding, episode tensors and the standard models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec
from metaplug.errors import ConfigError
from metaplug_torch import models, weights


@dataclass(frozen=True)
class Episodes:
    """An :class:`~metaplug.contract.interfaces.EpisodeBatch` as tensors on one device."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


class Backend:
    """PyTorch on ``device`` (default: ``cuda`` when available, else ``cpu``)."""

    name = "torch"
    models: tuple[str, ...] = tuple(models.BUILDERS)
    batching_modes: tuple[str, ...] = ("auto", "vectorized", "loop", "reference")
    export_formats: tuple[str, ...] = ("torch-export", "onnx")
    """What ``AdaptedModel.export`` writes (see :mod:`metaplug_torch.export`)."""
    weight_formats: tuple[str, ...] = weights.FORMATS
    """Files :meth:`read_weights` reads for ``--init-weights``: torch state dicts."""

    def __init__(self, device: str | None = None) -> None:
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

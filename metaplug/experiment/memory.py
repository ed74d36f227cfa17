"""How much memory a meta-batch of episodes needs, checked before anything is allocated."""

from __future__ import annotations

import math
import os
from typing import Any

from metaplug.errors import ConfigError

BYTES_PER_VALUE = 4
"""float32 inputs; labels and targets are counted at the same width (a lower bound)."""


def physical_memory() -> int | None:
    """Bytes of memory of this machine, or ``None`` where the system does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def episode_values(input_shape: tuple[int, ...], options: dict[str, Any]) -> int | None:
    """Values one episode holds (inputs and targets of its support and query examples), from the
    task options ``shots``, ``queries`` and ``ways`` (``None`` when the tasks do not have them)."""
    shots, queries, ways = options.get("shots"), options.get("queries"), options.get("ways", 1)
    if not (isinstance(shots, int) and isinstance(queries, int) and isinstance(ways, int)):
        return None
    return ways * (shots + queries) * (math.prod(input_shape) + 1)


def describe_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_fits_in_memory(experiment: Any, available: int | None = None) -> None:
    """Refuse a configuration whose training, validation or test meta-batch alone needs more
    memory than the machine has, naming the sizes to lower."""
    available = physical_memory() if available is None else available
    if available is None:
        return
    cfg = experiment.config
    input_shape = tuple(experiment.spec.input_shape)
    shapes = {"training": dict(cfg.tasks.options)}
    if cfg.train.val_every or cfg.train.test_tasks:
        shapes["evaluation"] = {**cfg.tasks.options, **cfg.evaluation.episode_shape()}
    for what, options in shapes.items():
        values = episode_values(input_shape, options)
        if values is None:
            continue
        needed = values * cfg.train.meta_batch_size * BYTES_PER_VALUE
        if needed > available:
            sizes = ", ".join(f"{k} {options[k]}" for k in ("ways", "shots", "queries") if k in options)
            raise ConfigError(
                f"one {what} meta-batch needs at least {describe_bytes(needed)} (train.meta_batch_size "
                f"{cfg.train.meta_batch_size} tasks of {sizes}), more than the {describe_bytes(available)} of "
                "memory of this machine; lower --meta-batch-size, --shots, --queries or --ways"
            )

"""Torch weight files for ``--init-weights``: state dicts saved with ``torch.save``.

Read with ``torch.load(weights_only=True)``, which unpickles only tensors and plain
containers (never arbitrary objects). Nested mappings are flattened with dots, so
``torch.save({"model": model.state_dict(), "optimizer": ...})`` gives ``model.<name>``
entries (the host keeps those, see :mod:`metaplug.experiment.weights`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaplug.errors import ConfigError

FORMATS: tuple[str, ...] = (".pt", ".pth", ".bin")
"""File suffixes of torch state dicts."""


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of the state dict at ``path`` as numpy arrays by name (bfloat16 as float32)."""
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "UnpicklingError"
        raise ConfigError(
            f"{path} is not a plain torch state dict: torch.load(weights_only=True) refuses it ({reason}); "
            "save model.state_dict() with torch.save"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read {path} with torch.load: {reason}") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path} holds a {type(loaded).__name__}, not a state dict (a mapping of names to tensors)")
    arrays: dict[str, np.ndarray] = {}
    _flatten(loaded, "", arrays)
    return arrays


def _flatten(value: Mapping[Any, Any], prefix: str, into: dict[str, np.ndarray]) -> None:
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            _flatten(item, f"{name}.", into)
        elif torch.is_tensor(item):
            tensor = item.detach().cpu()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
                tensor = tensor.float()
            into[name] = tensor.numpy().copy()

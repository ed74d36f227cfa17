"""Conversion between metaplug's shared weight layout (PyTorch's) and TensorFlow's.

The shared layout (``docs/models.md``) stores dense weights as ``(out, in)`` and
convolution kernels as ``(out, in, height, width)``; TensorFlow computes with
``(in, out)`` and ``(height, width, in, out)``. Vectors are the same in both. The
conversion depends only on the array's rank, so it also applies to everything
stored beside a weight (optimizer slots, Meta-SGD's learned rates).

Inputs: the host gives images channels first ``(..., C, H, W)``; TensorFlow
computes channels last ``(..., H, W, C)``.
"""

from __future__ import annotations

import numpy as np

_TO_NATIVE = {2: (1, 0), 4: (2, 3, 1, 0)}
_TO_SHARED = {2: (1, 0), 4: (3, 2, 0, 1)}


def to_native(array: np.ndarray) -> np.ndarray:
    """A weight in the shared (PyTorch) layout as TensorFlow's layout."""
    axes = _TO_NATIVE.get(np.ndim(array))
    return np.ascontiguousarray(np.transpose(array, axes)) if axes else np.array(array)  # keeps 0-d arrays 0-d


def to_shared(array: np.ndarray) -> np.ndarray:
    """A TensorFlow-layout weight in the shared (PyTorch) layout."""
    axes = _TO_SHARED.get(np.ndim(array))
    return np.ascontiguousarray(np.transpose(array, axes)) if axes else np.array(array)  # keeps 0-d arrays 0-d


def channels_last(x: np.ndarray, example_rank: int) -> np.ndarray:
    """Move the channel axis of images (examples of rank 3, ``C, H, W``) last; others unchanged."""
    if example_rank != 3:
        return x
    lead = x.ndim - 3
    return np.ascontiguousarray(np.moveaxis(x, lead, -1))

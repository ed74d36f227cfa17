"""ResNet-12's training-time regularisation (dropout and DropBlock), identical on every backend.

As MetaOptNet's ``ResNet12_embedding.py`` (Lee et al. 2019) with ``drop_rate`` ``p``:
blocks 0 and 1 end with dropout at rate ``p``, blocks 2 and 3 with DropBlock (Ghiasi et
al. 2018) whose rate grows linearly from ``p / ramp`` at the first meta-training step to
``p`` from step ``ramp - 1`` (counting from 0) on. DropBlock draws block seeds with probability

    gamma = rate / b**2 * (H * W) / ((H - b + 1) * (W - b + 1))

on the ``(H - b + 1) x (W - b + 1)`` positions where a ``b x b`` block fits (``b``: the
block size, at most the feature map's side, as Ghiasi et al.'s code clamps it), zeroes each
seed's block and rescales by ``elements / kept elements`` of the forward pass.

The random numbers are a counter-based hash, not a generator: the number drawn for an
element is a function of the run's seed, the meta-training step, the task's position in
the meta-batch, the model forward's number within the task (the first forward of a task is
0), the block and the element's index (channel-first order). So they need no generator
state, are the same under every batching mode (``torch.func.vmap`` included) and on every
backend, and a resumed run draws what the uninterrupted one would have (the step is the
outer optimizer's saved step count). This module is the numpy reference the backends'
tensor implementations are tested against.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

MASK32 = 0xFFFFFFFF
SALT = 0x6D657461
"""Starts every key (so that an all-zero key does not hash to a fixed point)."""
SECOND_SALT = 0x9E3779B9
"""Derives the key of the second hashing round from the first."""
DROPBLOCK_BLOCKS = (2, 3)
"""The blocks (from 0) that end with DropBlock; the others end with dropout."""

Shift = Callable[[Any, int], Any]
"""``x >> n`` for the backend's int64 tensors (TensorFlow's have no ``>>``)."""

# The functions below take Python ints, numpy arrays or a backend's int64 tensors (with
# ``shift`` for tensors without ``>>``): the backends draw with this very code.


def mul32(x: Any, constant: int) -> Any:
    """``x * constant mod 2**32`` for ``x`` in ``[0, 2**32)`` without overflowing 64 bits."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + ((x * high) & 0xFFFF) * 65536) & MASK32


def hash32(x: Any, shift: Shift = operator.rshift) -> Any:
    """Wellons' ``lowbias32``: a bijection of ``[0, 2**32)`` with full avalanche."""
    if isinstance(x, int):
        shift = operator.rshift
    x = x ^ shift(x, 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ shift(x, 15)
    x = mul32(x, 0x846CA68B)
    return x ^ shift(x, 16)


def seed_words(seed: int) -> tuple[int, int]:
    """The low and high 32 bits of a (non-negative, up to 64-bit) seed."""
    seed = int(seed)
    return seed & MASK32, (seed >> 32) & MASK32


def forward_key(seed: int, step: Any, task: Any, forward: int, block: int, shift: Shift = operator.rshift) -> Any:
    """The key of one block's draws in one forward pass (an int, or a tensor when ``step``
    or ``task`` is one)."""
    key: Any = SALT
    for part in (*seed_words(seed), step, task, forward, block):
        key = hash32(key ^ (part & MASK32), shift)
    return key


def uniform32(key: Any, index: Any, shift: Shift = operator.rshift) -> Any:
    """The 32-bit numbers drawn for elements ``index`` (int64; taken modulo ``2**32``) under ``key``."""
    second = hash32(key ^ SECOND_SALT, shift)
    return hash32(hash32((index & MASK32) ^ key, shift) ^ second, shift)


def dropout_threshold(rate: float) -> int:
    """Dropout drops an element whose number is below this (``floor(rate * 2**32)``)."""
    return math.floor(rate * 2.0**32)


def dropblock_size(block_size: int, height: int, width: int) -> int:
    """The block size used on an ``height x width`` map: at most its shorter side."""
    return max(1, min(int(block_size), int(height), int(width)))


def dropblock_threshold_scale(rate: float, height: int, width: int, block_size: int, ramp: int) -> float:
    """``c`` such that a seed is drawn where the number is below ``floor(c * min(step + 1, ramp))``:
    ``gamma * 2**32`` at full rate, divided by the ramp's length."""
    b = dropblock_size(block_size, height, width)
    fits = (height - b + 1) * (width - b + 1)
    return rate * height * width * 2.0**32 / (b * b * fits * ramp)


def dropblock_threshold(rate: float, height: int, width: int, block_size: int, ramp: int, step: int) -> int:
    """DropBlock's seed threshold at meta-training step ``step`` (0 for the first)."""
    scale = dropblock_threshold_scale(rate, height, width, block_size, ramp)
    return math.floor(float(min(step + 1, ramp)) * scale)


def keep_mask(
    shape: Sequence[int],
    *,
    seed: int,
    step: int,
    task: int,
    forward: int,
    block: int,
    rate: float,
    block_size: int,
    ramp: int,
) -> np.ndarray:
    """What block ``block``'s output ``(N, C, H, W)`` is multiplied by in that forward pass:
    0 where dropped, the rescaling factor elsewhere (float64)."""
    n, c, h, w = (int(s) for s in shape)
    key = forward_key(seed, step, task, forward, block)
    if block not in DROPBLOCK_BLOCKS:
        kept = uniform32(key, np.arange(n * c * h * w, dtype=np.int64).reshape(n, c, h, w)) >= dropout_threshold(rate)
        return kept / (1.0 - rate)
    b = dropblock_size(block_size, h, w)
    grid = np.arange(n * c * (h - b + 1) * (w - b + 1), dtype=np.int64).reshape(n, c, h - b + 1, w - b + 1)
    seeds = uniform32(key, grid) < dropblock_threshold(rate, h, w, block_size, ramp, step)
    covered = np.zeros((n, c, h, w), dtype=bool)
    for i in range(b):
        for j in range(b):
            covered[:, :, i : i + h - b + 1, j : j + w - b + 1] |= seeds
    kept = (~covered).astype(np.float64)
    return kept * (kept.size / max(float(kept.sum()), 1.0))


__all__ = [
    "DROPBLOCK_BLOCKS",
    "dropblock_size",
    "dropblock_threshold",
    "dropblock_threshold_scale",
    "dropout_threshold",
    "forward_key",
    "hash32",
    "keep_mask",
    "mul32",
    "seed_words",
    "uniform32",
]

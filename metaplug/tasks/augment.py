"""Seeded numpy augmentations of image episodes, named in ``[tasks] augment = [...]``.

Example augmentations change each image of a training episode (support and query alike),
with parameters drawn from the sampler's augmentation generator, which is saved with the
sampler's state so ``--resume`` continues bitwise:

``crop``
    pad by ``crop_padding`` pixels of zeros on every side, then crop back to the original
    size at a random offset (the CIFAR and mini-ImageNet recipe).
``flip``
    mirror left-right with probability 1/2.
``jitter``
    colour jitter: brightness, contrast and (RGB) saturation each scaled by a factor drawn
    from ``[1 - jitter, 1 + jitter]``, in that order, clipped to ``[0, 1]``.

A class augmentation changes the classes themselves:

``rotate``
    every class also appears rotated by 90, 180 and 270 degrees as three further classes
    (class ``4 * c + k`` is class ``c`` turned ``k`` quarter turns; Santoro et al. 2016,
    Finn et al. 2017 on Omniglot). Square images only.

Augmentations apply to the training split; validation and test episodes are left alone
unless the sampler's ``augment_eval`` option is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metaplug.errors import ConfigError

if TYPE_CHECKING:
    from metaplug.tasks.episodes import ClassDataset

EXAMPLE_AUGMENTATIONS = ("crop", "flip", "jitter")
CLASS_AUGMENTATIONS = ("rotate",)
AUGMENTATIONS = EXAMPLE_AUGMENTATIONS + CLASS_AUGMENTATIONS


def check_names(names: tuple[str, ...]) -> None:
    """One line for an unknown or repeated augmentation name."""
    for name in names:
        if name not in AUGMENTATIONS:
            raise ConfigError(f"augment: unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"augment names an augmentation twice: {list(names)}")


@dataclass(frozen=True)
class Augmentation:
    """The example augmentations of a sampler and their settings."""

    names: tuple[str, ...]
    padding: int = 4
    jitter: float = 0.4

    def draw(self, rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
        """Parameters for ``count`` images, drawn from ``rng`` in a fixed order (crop
        offsets, flips, jitter factors)."""
        drawn: dict[str, np.ndarray] = {}
        if "crop" in self.names:
            drawn["crop"] = rng.integers(0, 2 * self.padding + 1, size=(count, 2))
        if "flip" in self.names:
            drawn["flip"] = rng.random(count) < 0.5
        if "jitter" in self.names:
            drawn["jitter"] = rng.uniform(1 - self.jitter, 1 + self.jitter, size=(count, 3)).astype(np.float32)
        return drawn

    def apply(self, images: np.ndarray, drawn: Mapping[str, np.ndarray]) -> np.ndarray:
        """``images`` float32 ``(count, C, H, W)`` in ``[0, 1]`` transformed by ``drawn``
        (a pure function: the same inputs give the same output on every thread)."""
        out = images
        if "crop" in drawn:
            out = _crop(out, drawn["crop"], self.padding)
        if "flip" in drawn:
            out = np.where(drawn["flip"][:, None, None, None], out[..., ::-1], out)
        if "jitter" in drawn:
            out = _jitter(out, drawn["jitter"])
        return np.ascontiguousarray(out, dtype=np.float32)


def _crop(images: np.ndarray, offsets: np.ndarray, padding: int) -> np.ndarray:
    count, _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.empty_like(images)
    for i in range(count):
        top, left = offsets[i]
        out[i] = padded[i, :, top : top + height, left : left + width]
    return out


def _jitter(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    brightness, contrast, saturation = (factors[:, k, None, None, None] for k in range(3))
    out = np.clip(images * brightness, 0.0, 1.0)
    mean = _gray(out).mean(axis=(1, 2, 3), keepdims=True)
    out = np.clip((out - mean) * contrast + mean, 0.0, 1.0)
    if images.shape[1] == 3:
        gray = _gray(out)
        out = np.clip(gray + (out - gray) * saturation, 0.0, 1.0)
    return out


def _gray(images: np.ndarray) -> np.ndarray:
    """Luma ``(count, 1, H, W)`` (ITU-R 601 weights for RGB)."""
    if images.shape[1] != 3:
        return images
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
    return (images * weights).sum(axis=1, keepdims=True)


class RotatedClasses:
    """A :class:`~metaplug.tasks.episodes.ClassDataset` whose class ``4 * c + k`` is class
    ``c`` of ``dataset`` rotated by ``k`` quarter turns (the ``rotate`` augmentation)."""

    def __init__(self, dataset: ClassDataset) -> None:
        self.dataset = dataset

    @property
    def num_classes(self) -> int:
        return 4 * self.dataset.num_classes

    def class_size(self, label: int) -> int:
        return self.dataset.class_size(label // 4)

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        base, turns = divmod(label, 4)
        images = self.dataset.examples(base, indices)
        return np.ascontiguousarray(np.rot90(images, k=turns, axes=(-2, -1)))

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
    colour jitter: brightness, contrast (around the image's mean luma) and, for RGB,
    saturation (around each pixel's luma), each by a factor drawn from
    ``[1 - jitter, 1 + jitter]``, composed in that order and clipped to ``[0, 1]``.

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

from metaplug.contract.options import Options, option
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
class AugmentOptions(Options):
    """The augmentation options every image sampler shares."""

    augment: tuple[str, ...] = option((), help=f"augmentations of training episodes: {', '.join(AUGMENTATIONS)}")
    augment_eval: bool = option(False, help="augment validation and test episodes too")
    crop_padding: int = option(4, minimum=0, help="padding (pixels) of the crop augmentation")
    jitter: float = option(0.4, minimum=0, maximum=1, below_maximum=True, help="strength of the jitter augmentation")

    def validate(self) -> None:
        check_names(self.augment)

    def apply(self, dataset: ClassDataset, split: str) -> tuple[ClassDataset, Augmentation | None]:
        """``dataset`` with the class augmentations of ``split`` (rotations as new classes),
        and its example augmentations (``None`` without any)."""
        names = self.augment if split == "train" or self.augment_eval else ()
        if "rotate" in names:
            dataset = RotatedClasses(dataset)
        examples = tuple(n for n in names if n != "rotate")
        return dataset, Augmentation(examples, self.crop_padding, self.jitter) if examples else None


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
        """``images`` float32 ``(count, C, H, W)`` in ``[0, 1]`` transformed by ``drawn``,
        as a new array (a pure function: the same inputs give the same output on every
        thread)."""
        out = np.array(images, dtype=np.float32)
        self.apply_in_place(out, drawn)
        return out

    def apply_in_place(self, images: np.ndarray, drawn: Mapping[str, np.ndarray]) -> None:
        """:meth:`apply` overwriting ``images`` (float32, C-contiguous): no new batch-sized
        array, which matters as much as the arithmetic for 84x84 RGB batches."""
        if "crop" in drawn:
            _crop(images, drawn["crop"], self.padding)
        if "flip" in drawn:
            for i in np.flatnonzero(drawn["flip"]):
                images[i] = images[i, :, :, ::-1]
        if "jitter" in drawn:
            _jitter(images, drawn["jitter"])


def _crop(images: np.ndarray, offsets: np.ndarray, padding: int) -> None:
    """Each image (in place) cropped at ``offset`` from itself padded by ``padding`` zeros
    on every side: shifted by ``offset - padding`` pixels, zeros coming in."""
    _, _, height, width = images.shape
    for i, (top, left) in enumerate(offsets.tolist()):
        dy, dx = top - padding, left - padding
        if dy == 0 and dx == 0:
            continue
        image = images[i]
        rows = slice(max(0, -dy), min(height, height - dy))  # where the kept pixels go
        cols = slice(max(0, -dx), min(width, width - dx))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            image[:] = 0
            continue
        image[:, rows, cols] = image[:, rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx]
        image[:, : rows.start] = 0
        image[:, rows.stop :] = 0
        image[:, :, : cols.start] = 0
        image[:, :, cols.stop :] = 0


def _jitter(images: np.ndarray, factors: np.ndarray) -> None:
    """Brightness ``b``, contrast ``c`` (around the mean luma) and saturation ``s`` (around
    each pixel's luma) in place, then clipped once: ``x b c s + g b c (1 - s) + m b (1 - c)``
    for luma ``g`` and its mean ``m`` (the three blends composed; all are linear)."""
    brightness, contrast, saturation = (factors[:, k, None, None, None].astype(np.float32) for k in range(3))
    gray = _gray(images)
    mean = gray.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float32)
    if images.shape[1] != 3:  # no colour to saturate
        saturation = np.ones_like(saturation)
    scale = brightness * contrast
    gray *= scale * (1 - saturation)
    gray += mean * brightness * (1 - contrast)  # the per-pixel and per-image terms, on one channel
    images *= scale * saturation
    images += gray
    np.clip(images, 0.0, 1.0, out=images)


def _gray(images: np.ndarray) -> np.ndarray:
    """Luma ``(count, 1, H, W)`` (ITU-R 601 weights for RGB), a new array."""
    if images.shape[1] != 3:
        return np.array(images, dtype=np.float32)
    gray = images[:, 0:1] * np.float32(0.299)
    gray += images[:, 1:2] * np.float32(0.587)
    gray += images[:, 2:3] * np.float32(0.114)
    return gray


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

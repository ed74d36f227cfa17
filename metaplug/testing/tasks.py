"""Easy synthetic tasks on which any working algorithm must improve by adapting: Gaussian
classes for the ``mlp``, Omniglot-shaped glyphs for ``conv4``, sinusoids for regression."""

from __future__ import annotations

from typing import Any

import numpy as np

from metaplug.contract.interfaces import SPLITS, TaskSpec
from metaplug.tasks.episodes import EpisodeSampler, LabelledArrays, NWayKShot, split_rng


class PrototypeSampler(EpisodeSampler):
    """N-way K-shot classification over well-separated Gaussian classes.

    ``num_classes`` prototypes are drawn on a sphere of radius ``separation`` in
    ``dim`` dimensions; each class has ``per_class`` examples, its prototype plus
    Gaussian noise of standard deviation ``noise``. Episodes come from
    :class:`metaplug.tasks.episodes.NWayKShot`, so they follow the same conventions
    as Omniglot's. Each split has its own ``num_classes`` classes, fixed by
    ``data_seed``; ``seed`` chooses the episodes.
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        ways: int = 5,
        shots: int = 1,
        queries: int = 5,
        dim: int = 16,
        num_classes: int = 20,
        per_class: int = 20,
        separation: float = 3.0,
        noise: float = 0.3,
        data_seed: int = 1234,
    ) -> None:
        rng = split_rng(seed, split)  # validates split and seed
        data_rng = np.random.default_rng([data_seed, SPLITS.index(split) if split in SPLITS else 0])
        prototypes = data_rng.normal(size=(num_classes, dim))
        prototypes *= separation / np.linalg.norm(prototypes, axis=1, keepdims=True)
        x = prototypes[:, None, :] + noise * data_rng.normal(size=(num_classes, per_class, dim))
        y = np.repeat(np.arange(num_classes), per_class)
        dataset = LabelledArrays(x.reshape(-1, dim), y)
        self.episodes = NWayKShot(dataset, ways, shots, queries, rng)
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(dim,),
            output_size=ways,
            num_classes=num_classes,
            default_model="mlp",
        )


def glyph(rng: np.random.Generator, strokes: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` character of ``strokes`` random line segments, ink 1 on background 0,
    strokes about two pixels wide and kept off the border."""
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), axis=-1).astype(np.float64)
    image = np.zeros((size, size))
    for _ in range(strokes):
        start, end = rng.uniform(0.15 * size, 0.85 * size, size=(2, 2))
        direction = end - start
        along = np.clip((grid - start) @ direction / max(float(direction @ direction), 1e-9), 0.0, 1.0)
        distance = np.linalg.norm(grid - (start + along[..., None] * direction), axis=-1)
        image = np.maximum(image, np.clip(1.5 - distance, 0.0, 1.0))
    return image


class GlyphSampler(EpisodeSampler):
    """Omniglot-shaped episodes without the dataset: ``(1, size, size)`` images in [0, 1],
    5-way 1-shot with 3 queries per class by default, ``default_model="conv4"``.

    Each class is a random character of ``strokes`` line segments (:func:`glyph`); its
    ``per_class`` examples are that character shifted by up to ``shift`` pixels, plus
    Gaussian noise of standard deviation ``noise``, clipped to [0, 1]. The classes are easy
    to tell apart, so adapting conv4 (batch norm included) to one example per class
    lowers the query loss at once. Each split has its own ``num_classes`` characters,
    fixed by ``data_seed``; ``seed`` chooses the episodes.
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        ways: int = 5,
        shots: int = 1,
        queries: int = 3,
        size: int = 28,
        num_classes: int = 20,
        per_class: int = 10,
        strokes: int = 3,
        shift: int = 1,
        noise: float = 0.1,
        data_seed: int = 1234,
    ) -> None:
        rng = split_rng(seed, split)  # validates split and seed
        data_rng = np.random.default_rng([data_seed, SPLITS.index(split)])
        characters = [glyph(data_rng, strokes, size) for _ in range(num_classes)]
        offsets = data_rng.integers(-shift, shift + 1, size=(num_classes, per_class, 2))
        x = np.stack(
            [[np.roll(c, tuple(o), axis=(0, 1)) for o in moves] for c, moves in zip(characters, offsets, strict=True)]
        )
        x = np.clip(x + noise * data_rng.normal(size=x.shape), 0.0, 1.0)
        y = np.repeat(np.arange(num_classes), per_class)
        self.episodes = NWayKShot(LabelledArrays(x.reshape(-1, 1, size, size), y), ways, shots, queries, rng)
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(1, size, size),
            output_size=ways,
            num_classes=num_classes,
            default_model="conv4",
        )


def easy_sampler(problem: str, seed: int = 0, **options: Any) -> Any:
    """An easy sampler for ``problem``: sinusoids with 25 support and 25 query points
    (dense enough that fitting the support set fits the query set, even from a random
    initialisation) for regression, :class:`PrototypeSampler` for classification."""
    if problem == "regression":
        from metaplug.tasks.sinusoid import SinusoidSampler

        return SinusoidSampler("train", seed, **{"shots": 25, "queries": 25, **options})
    return PrototypeSampler("train", seed, **options)

"""What the standard few-shot benchmarks share: their options and their sampler.

Each benchmark module (:mod:`~metaplug.tasks.mini_imagenet`, ...) describes its
dataset (:class:`~metaplug.tasks.layouts.DatasetInfo`) and how to read one split of
it (a :class:`~metaplug.tasks.split_cache.SplitPlan`). :class:`BenchmarkSampler`
locates and verifies the files, has the split decoded once into the memory-mapped
cache (:mod:`metaplug.tasks.split_cache`), and draws N-way K-shot episodes from it as
float32 ``(3, size, size)`` images in ``[0, 1]``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from metaplug.contract.interfaces import TaskSpec
from metaplug.contract.options import option
from metaplug.tasks.augment import AugmentOptions
from metaplug.tasks.episodes import EpisodeSampler, NWayKShot, split_rng
from metaplug.tasks.layouts import DatasetInfo, Found, locate, verify
from metaplug.tasks.split_cache import SplitImages, SplitPlan, decoded_split


class ImageClasses:
    """A :class:`~metaplug.tasks.episodes.ClassDataset` over a decoded split."""

    def __init__(self, images: np.ndarray, counts: list[int]) -> None:
        self.images = images
        self.counts = list(counts)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def class_size(self, label: int) -> int:
        return self.counts[label]

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        return self.images[self.offsets[label] + np.asarray(indices)].astype(np.float32) / 255.0


def in_order(classes: list[str], by_class: dict[str, list[Any]]) -> Iterator[tuple[int, Any]]:
    """``(class index, item)`` for the items of each class, class after class."""
    for label, name in enumerate(classes):
        for item in by_class.get(name, []):
            yield label, item


@dataclass(frozen=True)
class BenchmarkOptions(AugmentOptions):
    """N-way K-shot episodes of a standard benchmark."""

    ways: int = option(5, minimum=1, help="classes per episode")
    shots: int = option(1, minimum=1, help="support examples per class")
    queries: int = option(15, minimum=1, help="query examples per class")
    root: str | None = option(
        None, path=True, help="folder with the dataset's files (default: DATA_DIR/<dataset folder>)"
    )
    image_size: int = option(84, minimum=8, maximum=512, help="side of the resized images")


@dataclass(frozen=True)
class PickleBenchmarkOptions(BenchmarkOptions):
    """N-way K-shot episodes of a standard benchmark that may come as a pickle cache."""

    allow_pickle: bool = option(
        False, help="read a pickle cache (numpy arrays only) and convert it once into metaplug's cache"
    )


class BenchmarkSampler(EpisodeSampler):
    """N-way K-shot episodes of one split of a standard dataset:
    ``(T, ways*shots, 3, size, size)`` float32 in [0, 1]. Subclasses set ``name``,
    ``info``, ``Options`` and :meth:`read_split`."""

    name: ClassVar[str]
    info: ClassVar[DatasetInfo]
    Options: ClassVar[type[BenchmarkOptions]] = BenchmarkOptions

    def __init__(self, split: str = "train", seed: int = 0, data_dir: str | None = None, **options: Any) -> None:
        o = self.Options.parse(options, owner=f"task sampler {self.name!r}")
        rng = split_rng(seed, split)
        self.options = o
        decoded = self.load(split, o, data_dir)
        self.classes = decoded.classes
        self.dataset, augmentation = o.apply(ImageClasses(decoded.images, decoded.counts), split)
        augment_rng = split_rng(seed, split, stream=1) if augmentation else None
        self.episodes = NWayKShot(self.dataset, o.ways, o.shots, o.queries, rng, augmentation, augment_rng)
        self.split = split
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(3, o.image_size, o.image_size),
            output_size=o.ways,
            num_classes=self.dataset.num_classes,
            default_model="conv4",
        )

    @classmethod
    def load(cls, split: str, o: BenchmarkOptions, data_dir: str | None = None) -> SplitImages:
        """Locate and verify the files, then the split decoded (from the cache when it has it)."""
        folder = cls.info.root(o.root, data_dir)
        found = locate(cls.info, folder, split, allow_pickle=bool(getattr(o, "allow_pickle", False)))
        verify(cls.info, found)
        subfolders = cls.key_subfolders(found, split)
        plan = functools.partial(cls.read_split, found, split, o.image_size)
        return decoded_split(cls.info, found, split, o.image_size, plan, subfolders)

    @classmethod
    def read_split(cls, found: Found, split: str, size: int) -> SplitPlan:
        """How to read ``split`` from the files ``found``."""
        raise NotImplementedError

    @classmethod
    def key_subfolders(cls, found: Found, split: str) -> set[str] | None:
        """The only sub-folders of a found folder that ``split`` reads (``None``: all); the
        cache key then ignores the others (ImageNet's 1000 class folders, say)."""
        return None

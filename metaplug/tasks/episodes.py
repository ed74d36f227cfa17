"""N-way K-shot episodes over any labelled dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from metaplug.contract.interfaces import SPLITS, EpisodeBatch, TaskSpec
from metaplug.contract.options import checked
from metaplug.errors import ConfigError
from metaplug.tasks.augment import Augmentation

_SPLIT_KEYS = {name: index for index, name in enumerate(SPLITS)}


def split_rng(seed: int, split: str, stream: int = 0) -> np.random.Generator:
    """A generator for ``split`` that is independent of the other splits' for one seed;
    ``stream`` 1, 2... give further independent generators of the same split (stream 1:
    augmentations)."""
    if split not in _SPLIT_KEYS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    entropy = [int(seed), _SPLIT_KEYS[split]] + ([stream] if stream else [])
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as JSON-ready data."""
    return dict(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    rng.bit_generator.state = dict(state)


class ClassDataset(Protocol):
    """Examples grouped by class: what :class:`NWayKShot` samples from."""

    @property
    def num_classes(self) -> int: ...

    def class_size(self, label: int) -> int:
        """Number of examples of class ``label``."""
        ...

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        """Examples ``indices`` of class ``label`` as float32 ``(len(indices), *shape)``."""
        ...


class LabelledArrays:
    """A :class:`ClassDataset` over in-memory arrays ``x`` (examples) and ``y`` (labels)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x) != len(y):
            raise ConfigError(f"x and y differ in length ({len(x)} vs {len(y)})")
        self._x = np.asarray(x, dtype=np.float32)
        labels = np.asarray(y)
        self._members = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    @property
    def num_classes(self) -> int:
        return len(self._members)

    def class_size(self, label: int) -> int:
        return len(self._members[label])

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        return self._x[self._members[label][indices]]


@dataclass(frozen=True)
class EpisodePlan:
    """Every random choice behind a batch of episodes; :meth:`NWayKShot.materialise` turns
    it into the batch without drawing anything more."""

    classes: np.ndarray
    """``(T, ways)`` class ids."""
    indices: np.ndarray
    """``(T, ways, shots + queries)`` example indices within each class."""
    augment: dict[str, np.ndarray] = field(default_factory=dict)
    """Augmentation parameters of the ``T * ways * (shots + queries)`` images, in order."""


class NWayKShot:
    """Draws batches of N-way K-shot episodes from a :class:`ClassDataset`.

    Each episode picks ``ways`` distinct classes and, per class, ``shots`` support
    and ``queries`` query examples without overlap. Labels are remapped to
    ``0..ways-1`` in the order the classes were drawn; examples are ordered class
    by class. The split-wide ids of the chosen classes are in ``batch.classes``.
    With ``augmentation``, every image is transformed with parameters drawn from
    ``augment_rng`` (so the episodes' classes and examples do not depend on it).

    Drawing is split in two: :meth:`plan` makes every random choice (in order, cheap) and
    :meth:`materialise` reads and transforms the images (pure, safe to run on other
    threads), so a prefetcher can build batches in parallel and still give the same ones.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        rng: np.random.Generator,
        augmentation: Augmentation | None = None,
        augment_rng: np.random.Generator | None = None,
        where: str = "",
    ) -> None:
        check_positive(ways=ways, shots=shots, queries=queries)
        if ways > dataset.num_classes:
            raise ConfigError(f"ways={ways} exceeds the {dataset.num_classes} classes available{where}")
        smallest = min(dataset.class_size(c) for c in range(dataset.num_classes))
        if shots + queries > smallest:
            raise ConfigError(
                f"shots + queries = {shots + queries} exceeds the {smallest} examples of the smallest class{where}"
            )
        if augmentation is not None and augment_rng is None:
            raise ConfigError("an augmentation needs its augment_rng")
        self.dataset, self.ways, self.shots, self.queries, self.rng = dataset, ways, shots, queries, rng
        self.augmentation, self.augment_rng = augmentation, augment_rng

    def sample(self, num_tasks: int) -> EpisodeBatch:
        return self.materialise(self.plan(num_tasks))

    def plan(self, num_tasks: int) -> EpisodePlan:
        """The random choices of the next ``num_tasks`` episodes."""
        check_positive(num_tasks=num_tasks)
        per_class = self.shots + self.queries
        classes = np.stack(
            [self.rng.choice(self.dataset.num_classes, self.ways, replace=False) for _ in range(num_tasks)]
        )
        indices = np.array(
            [
                [self.rng.choice(self.dataset.class_size(int(c)), per_class, replace=False) for c in task]
                for task in classes
            ]
        ).reshape(num_tasks, self.ways, per_class)
        augment = {}
        if self.augmentation is not None and self.augment_rng is not None:
            augment = self.augmentation.draw(self.augment_rng, indices.size)
        return EpisodePlan(classes, indices, augment)

    def materialise(self, plan: EpisodePlan) -> EpisodeBatch:
        """The batch ``plan`` describes (reads and transforms images; draws nothing)."""
        classes = plan.classes
        num_tasks, per_class = len(classes), self.shots + self.queries
        images: np.ndarray | None = None  # (T, ways, shots + queries, *shape), filled in place
        for t, (task, rows) in enumerate(zip(classes, plan.indices, strict=True)):
            for w, (c, index) in enumerate(zip(task, rows, strict=True)):
                examples = self.dataset.examples(int(c), index)
                if images is None:
                    images = np.empty((num_tasks, self.ways, per_class, *examples.shape[1:]), dtype=np.float32)
                images[t, w] = examples
        assert images is not None
        shape = images.shape[3:]
        if plan.augment and self.augmentation is not None:
            self.augmentation.apply_in_place(images.reshape(-1, *shape), plan.augment)
        labels = np.broadcast_to(np.arange(self.ways, dtype=np.int64)[:, None], (self.ways, per_class))
        labels = np.broadcast_to(labels, (num_tasks, self.ways, per_class))
        support, query = slice(0, self.shots), slice(self.shots, per_class)
        return EpisodeBatch(
            support_x=np.ascontiguousarray(images[:, :, support].reshape(num_tasks, -1, *shape)),
            support_y=np.ascontiguousarray(labels[:, :, support].reshape(num_tasks, -1)),
            query_x=np.ascontiguousarray(images[:, :, query].reshape(num_tasks, -1, *shape)),
            query_y=np.ascontiguousarray(labels[:, :, query].reshape(num_tasks, -1)),
            problem="classification",
            classes=classes.astype(np.int64),
        )


class EpisodeSampler:
    """Base of task samplers that draw N-way K-shot episodes: a subclass sets
    ``self.episodes`` (a :class:`NWayKShot`) and ``self.spec``; sampling and the
    checkpoint state follow from them."""

    episodes: NWayKShot
    spec: TaskSpec

    def sample(self, num_tasks: int) -> EpisodeBatch:
        return self.episodes.sample(num_tasks)

    def plan(self, num_tasks: int) -> EpisodePlan:
        """The random choices of the next batch (see :meth:`NWayKShot.plan`)."""
        return self.episodes.plan(num_tasks)

    def materialise(self, plan: EpisodePlan) -> EpisodeBatch:
        """The batch of a :meth:`plan`; draws nothing, safe on other threads."""
        return self.episodes.materialise(plan)

    def state_dict(self) -> dict[str, Any]:
        state = {"rng": rng_state(self.episodes.rng)}
        if self.episodes.augment_rng is not None:
            state["augment_rng"] = rng_state(self.episodes.augment_rng)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        set_rng_state(self.episodes.rng, state["rng"])
        if self.episodes.augment_rng is not None:
            if "augment_rng" not in state:
                raise ConfigError("the saved sampler state has no augmentation state (saved without augment?)")
            set_rng_state(self.episodes.augment_rng, state["augment_rng"])


def check_positive(**values: int) -> None:
    """Each value an integer of at least 1 (the messages of declared options)."""
    for name, value in values.items():
        checked(name, value, int, minimum=1)

"""Easy synthetic tasks on which any working algorithm must improve by adapting."""

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
            problem="classification", input_shape=(dim,), output_size=ways,
            num_classes=num_classes, default_model="mlp",
        )


def easy_sampler(problem: str, seed: int = 0, **options: Any) -> Any:
    """An easy sampler for ``problem``: sinusoids with 25 support and 25 query points
    (dense enough that fitting the support set fits the query set, even from a random
    initialisation) for regression, :class:`PrototypeSampler` for classification."""
    if problem == "regression":
        from metaplug.tasks.sinusoid import SinusoidSampler

        return SinusoidSampler("train", seed, **{"shots": 25, "queries": 25, **options})
    return PrototypeSampler("train", seed, **options)

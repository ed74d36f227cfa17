"""Meta-regression tasks on 10-dimensional inputs, for the seed article's examples.

Each task is a linear function ``y = w . x + b`` of ``x ~ N(0, I)``; the tasks share
structure (``w`` scatters around a mean direction common to all of them), which is what
a meta-learner can learn and a model trained from scratch on 10 examples cannot.
"""

from __future__ import annotations

import numpy as np

from metaplug.contract.interfaces import SPLITS, EpisodeBatch, TaskSpec


class LinearTasks:
    """A task sampler (``spec`` and ``sample``) of linear regression tasks."""

    def __init__(self, split: str = "train", seed: int = 0, dims: int = 10, shots: int = 10, queries: int = 10):
        self.rng = np.random.default_rng([seed, SPLITS.index(split)])
        self.mean = np.random.default_rng(2024).normal(size=dims)  # the structure every task shares
        self.shots, self.queries = shots, queries
        self.spec = TaskSpec("regression", (dims,), 1)

    def sample(self, num_tasks: int) -> EpisodeBatch:
        dims, n = self.spec.input_shape[0], self.shots + self.queries
        w = self.mean + 0.5 * self.rng.normal(size=(num_tasks, dims))
        b = self.rng.normal(size=(num_tasks, 1))
        x = self.rng.normal(size=(num_tasks, n, dims))
        y = np.einsum("tnd,td->tn", x, w)[..., None] + b[:, None]
        x, y = x.astype(np.float32), y.astype(np.float32)
        s = self.shots
        return EpisodeBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:], "regression")

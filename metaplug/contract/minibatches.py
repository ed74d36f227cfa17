"""Mini-batches of a task's support set for inner loops, identical on every backend.

Drawn as supervised-reptile's ``_mini_batches(samples, batch_size, count,
replacement=False)`` (Nichol et al. 2018's code): shuffle, take consecutive chunks,
shuffle again when the examples run out. Task ``k`` of a stream (meta-training or
evaluation) shuffles with ``numpy.random.default_rng([seed, stream, k])``, so two
backends given the same seed pick the same examples, and a run resumes exactly from
the saved counters (:meth:`MiniBatchDraws.state`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from metaplug.errors import ConfigError

TRAIN, EVAL = 0, 1
"""Streams of draws: meta-training tasks, and the tasks of ``evaluate`` and ``adapt``."""

STATE_KEYS = ("inner_batches.seed", "inner_batches.train", "inner_batches.eval")


def mini_batches(rng: np.random.Generator, size: int, batch_size: int, count: int) -> np.ndarray:
    """``(count, batch_size)`` indices into ``range(size)``: shuffle the examples in place
    (``rng.shuffle``, continuing from the previous order), take consecutive chunks, and
    shuffle again when the examples run out; a chunk may span two shuffles."""
    order = np.arange(size)
    drawn: list[int] = []
    while len(drawn) < count * batch_size:
        rng.shuffle(order)
        drawn.extend(order.tolist())
    return np.asarray(drawn[: count * batch_size], dtype=np.int64).reshape(count, batch_size)


def draw_generator(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator of the mini-batches of task number ``index`` of ``stream``."""
    return np.random.default_rng([seed, stream, index])


class MiniBatchDraws:
    """The mini-batches of an algorithm's inner loops: ``batch_sizes[stream]`` examples per
    step (``None``: the whole support set), counting the tasks each stream has drawn for."""

    def __init__(self, seed: int, train_batch_size: int | None, eval_batch_size: int | None) -> None:
        self.seed = int(seed)
        self.batch_sizes = (train_batch_size, eval_batch_size)
        self.drawn = [0, 0]

    @property
    def enabled(self) -> bool:
        """Whether either stream uses mini-batches (and so has state to save)."""
        return any(size is not None for size in self.batch_sizes)

    def draw(self, stream: int, tasks: int, steps: int, size: int) -> np.ndarray | None:
        """``(tasks, steps, batch)`` indices for the next ``tasks`` tasks of ``stream``, whose
        support sets hold ``size`` examples; ``None`` when the stream has no mini-batches."""
        batch_size = self.batch_sizes[stream]
        if batch_size is None:
            return None
        first, self.drawn[stream] = self.drawn[stream], self.drawn[stream] + tasks
        return np.stack(
            [mini_batches(draw_generator(self.seed, stream, first + k), size, batch_size, steps) for k in range(tasks)]
        )

    def state(self) -> dict[str, np.ndarray]:
        """``inner_batches.seed``, ``.train`` and ``.eval`` (``{}`` when not :attr:`enabled`)."""
        if not self.enabled:
            return {}
        values = (np.uint64(self.seed), np.int64(self.drawn[TRAIN]), np.int64(self.drawn[EVAL]))
        return {key: np.asarray(value) for key, value in zip(STATE_KEYS, values, strict=True)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` saved."""
        if not self.enabled:
            return
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ConfigError(f"state has no entry {missing[0]!r} (saved without mini-batches?)")
        self.seed = int(state["inner_batches.seed"])
        self.drawn = [int(state["inner_batches.train"]), int(state["inner_batches.eval"])]

"""Drawing the next meta-batches in the background while the current step computes.

:class:`Prefetcher` wraps any task sampler. A producer thread draws batches in order into
a bounded queue (``depth`` batches ahead). Samplers that split a draw into a cheap
sequential :meth:`plan` (every random choice) and a pure ``materialise(plan)`` (reading
and transforming images), as the built-in N-way K-shot samplers do, have the second part
run on ``workers`` threads at once; other samplers are drawn whole by the producer.
Either way the batches, and their order, are exactly those of calling ``sample`` directly,
whatever the number of workers.

The wrapper's :meth:`state_dict` is the sampler's state after the last batch handed out
(recorded by the producer), not after the batches drawn ahead, so a checkpoint taken with
prefetching resumes bitwise, with or without it.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from metaplug.contract.interfaces import EpisodeBatch, TaskSampler, TaskSpec
from metaplug.contract.options import checked

_POLL_S = 0.1


class Prefetcher:
    """``sampler`` drawn ``depth`` meta-batches of ``num_tasks`` ahead, in the background.

    Use it as the sampler (``sample``, ``state_dict``, ``load_state_dict``, ``spec``);
    ``waited_s`` is the total time :meth:`sample` spent waiting for a batch. Call
    :meth:`close` (or use it as a context manager) to stop the thread.
    """

    def __init__(self, sampler: TaskSampler, num_tasks: int, depth: int = 2, workers: int = 1) -> None:
        self.sampler = sampler
        self.num_tasks = checked("num_tasks", num_tasks, int, minimum=1)
        self.depth = checked("train.prefetch", depth, int, minimum=1)
        self.workers = checked("train.data_workers", workers, int, minimum=1)
        self.waited_s = 0.0
        self.batches = 0
        self._state: dict[str, Any] = copy.deepcopy(sampler.state_dict())
        self._queue: queue.Queue[tuple[Any, Future[EpisodeBatch] | None, BaseException | None]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def spec(self) -> TaskSpec:
        return self.sampler.spec

    @property
    def planned(self) -> bool:
        """Whether the sampler splits draws into ``plan`` and ``materialise``."""
        return callable(getattr(self.sampler, "plan", None)) and callable(getattr(self.sampler, "materialise", None))

    def sample(self, num_tasks: int) -> EpisodeBatch:
        """The next batch (drawn directly, after stopping the background, for another size)."""
        if num_tasks != self.num_tasks:
            self._halt()
            self.sampler.load_state_dict(self._state)
            batch = self.sampler.sample(num_tasks)
            self._state = copy.deepcopy(self.sampler.state_dict())
            return batch
        if self._thread is None:
            self._start()
        assert self._queue is not None
        began = time.perf_counter()
        state, future, error = self._queue.get()
        if error is not None:
            self._halt()
            raise error
        assert future is not None
        try:
            batch = future.result()
        except BaseException:
            self._halt()
            raise
        self.waited_s += time.perf_counter() - began
        self.batches += 1
        self._state = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state after the last batch :meth:`sample` returned."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Drop the batches drawn ahead and continue from ``state``."""
        self._halt()
        self.sampler.load_state_dict(state)
        self._state = copy.deepcopy(self.sampler.state_dict())

    def close(self) -> None:
        """Stop the background thread; the sampler is left at :meth:`state_dict`."""
        self._halt()
        self.sampler.load_state_dict(self._state)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background -------------------------------------------------------------------------

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        if self.planned and self.workers > 1:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="metaplug-materialise")
        self._thread = threading.Thread(target=self._produce, name="metaplug-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                future = self._draw()
                item: tuple[Any, Future[EpisodeBatch] | None, BaseException | None] = (
                    copy.deepcopy(self.sampler.state_dict()),
                    future,
                    None,
                )
            except BaseException as exc:  # handed to the consumer, which raises it
                item = (None, None, exc)
            if not self._put(item) or item[2] is not None:
                return

    def _draw(self) -> Future[EpisodeBatch]:
        """The next batch: planned here in order, materialised on the pool when there is one."""
        if self.planned:
            plan = self.sampler.plan(self.num_tasks)  # type: ignore[attr-defined]
            materialise: Callable[[Any], EpisodeBatch] = self.sampler.materialise  # type: ignore[attr-defined]
            if self._pool is not None:
                return self._pool.submit(materialise, plan)
            return _done(materialise(plan))
        return _done(self.sampler.sample(self.num_tasks))

    def _put(self, item: Any) -> bool:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _halt(self) -> None:
        """Stop the producer and drop what it drew ahead (the sampler's own state is then
        somewhere ahead: callers load :attr:`_state` back)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._queue = None


def _done(batch: EpisodeBatch) -> Future[EpisodeBatch]:
    future: Future[EpisodeBatch] = Future()
    future.set_result(batch)
    return future


__all__ = ["Prefetcher"]

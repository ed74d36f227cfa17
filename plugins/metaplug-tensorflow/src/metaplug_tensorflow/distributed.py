"""Data-parallel meta-training on ``tf.distribute``: workers described by ``TF_CONFIG`` (set
by the user on each machine, or by ``metaplug train --nproc N`` for local processes) join a
``MultiWorkerMirroredStrategy``, whose collective ops (ring all-reduce on CPU, NCCL on
GPUs) average the meta-gradients. The host's contract: :mod:`metaplug.contract.distributed`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from metaplug.contract.distributed import lost_workers
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf

LOCAL_RANK = "METAPLUG_LOCAL_RANK"
"""The worker's index among those of its machine, set by :func:`launch` (picks its GPU)."""


WATCHDOG = """
import os, signal, sys, time
pid, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(timeout)
print(message, file=sys.stderr, flush=True)
os.kill(pid, signal.SIGKILL)
"""
"""Ends process ``pid`` with ``message`` after ``timeout`` seconds unless it is killed first."""


class Workers:
    """This process's place among the workers of a ``MultiWorkerMirroredStrategy``."""

    def __init__(self, cluster: dict[str, Any], timeout_s: float) -> None:
        self.timeout_s = float(timeout_s)
        gpus = tf.config.list_physical_devices("GPU")
        index = int(cluster["task"]["index"])
        if gpus:  # one GPU per worker process
            local = int(os.environ.get(LOCAL_RANK, index))
            tf.config.set_visible_devices(gpus[local % len(gpus)], "GPU")
        self.strategy = self.connect(cluster)
        self.rank = index
        self.world_size = len(cluster["cluster"]["worker"])
        self.name = f"tf.distribute.MultiWorkerMirroredStrategy ({'NCCL' if gpus else 'ring'})"
        self.restarted = False
        self.reduce_seconds = 0.0
        self._gather = tf.function(
            lambda x: self._replicated(lambda ctx, y: ctx.all_gather(y, axis=0), x), reduce_retracing=True
        )

    def connect(self, cluster: dict[str, Any]) -> Any:
        """The strategy, once every worker of ``cluster`` has joined. TensorFlow's start-up
        waits for the peers without a timeout and without releasing the interpreter, so a
        watchdog process ends this one with one line when they do not join within the
        timeout (a stale ``TF_CONFIG``, a peer that never started)."""
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=self.timeout_s)
        peers = ", ".join(cluster["cluster"]["worker"])
        message = str(lost_workers("tf.distribute", self.timeout_s, f"not every worker of TF_CONFIG ({peers}) joined"))
        watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(self.timeout_s), f"Error: {message}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        try:
            with self.collective():
                return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        finally:
            watchdog.kill()
            watchdog.wait()

    @classmethod
    def join(cls, timeout_s: float, device: str | None) -> Workers | None:
        """The workers ``TF_CONFIG`` describes (a ``worker`` task of a cluster), else ``None``."""
        text = os.environ.get("TF_CONFIG")
        if not text:
            return None
        try:
            cluster = json.loads(text)
            workers = cluster["cluster"]["worker"]
            task = cluster["task"]
            if task["type"] not in ("worker", "chief") or not isinstance(workers, list):
                raise ValueError("task type must be 'worker'")
            int(task["index"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"TF_CONFIG is not a worker of a cluster ({exc}); expected "
                '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
            ) from None
        return cls(cluster, timeout_s)

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """A failed collective (a dead peer, a timeout) as a one-line :class:`WorkerError`."""
        try:
            yield
        except (tf.errors.OpError, RuntimeError) as exc:
            text = getattr(exc, "message", None) or str(exc)
            detail = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
            raise lost_workers("tf.distribute", self.timeout_s, f"{type(exc).__name__}: {detail[:160]}") from None

    def _replicated(self, fn: Any, *tensors: tf.Tensor) -> Any:
        """``fn(replica context, *tensors)`` run by the strategy on this worker's replica."""
        with self.strategy.scope():
            return self.strategy.run(
                lambda *xs: fn(tf.distribute.get_replica_context(), *[tf.identity(x) for x in xs]), args=tensors
            )

    # -- the contract -------------------------------------------------------------------
    def average_gradients(self, algorithm: Any) -> None:
        """Wrap the outer optimizer's ``apply(grads)`` (traced into the compiled training
        step) so that it first replaces the gradients by their mean over the workers."""
        optimizer: Any = getattr(algorithm, "optimizer", None)
        if not callable(getattr(optimizer, "apply", None)):
            raise ConfigError(
                f"algorithm {getattr(algorithm, 'name', type(algorithm).__name__)!r} has no outer optimizer "
                "(algorithm.optimizer.apply) whose gradients metaplug can average over workers"
            )
        apply = optimizer.apply

        def averaged(grads: Sequence[tf.Tensor | None]) -> Any:
            present = [g for g in grads if g is not None]  # None: a frozen weight, which the optimizer skips
            if not present:
                return apply(list(grads))
            mean = iter(
                self._replicated(lambda ctx, *g: ctx.all_reduce(tf.distribute.ReduceOp.MEAN, list(g)), *present)
            )
            return apply([None if g is None else next(mean) for g in grads])

        optimizer.apply = averaged

    def all_gather(self, values: np.ndarray) -> np.ndarray:
        tensor = tf.constant(np.asarray(values, dtype=np.float64)[None])
        with self.collective():
            return np.asarray(self._gather(tensor).numpy())

    def broadcast_text(self, text: str) -> str:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.float64)
        longest = int(self.all_gather(np.array([len(data)], dtype=np.float64)).max())
        padded = np.zeros(longest + 1)
        padded[0] = len(data)
        padded[1 : 1 + len(data)] = data
        first = self.all_gather(padded)[0]
        return bytes(first[1 : 1 + int(first[0])].astype(np.uint8)).decode("utf-8")

    def close(self) -> None:
        """Wait at a barrier of TensorFlow's coordination service until every worker is here:
        a collective's data is pulled from the worker that holds it, so a worker that left
        after its last collective could cut off a slower one still pulling from it. The
        servers end with the process."""
        from tensorflow.python.eager import context  # the barrier has no public API

        with contextlib.suppress(Exception):  # no coordination service, or a worker already gone
            context.context().wait_at_barrier("metaplug-close", int(self.timeout_s * 1000))


def free_ports(count: int) -> list[int]:
    """``count`` local TCP ports that are free now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(nproc: int, argv: Sequence[str], threads: int, timeout_s: float = 300.0) -> int:
    """Run ``metaplug argv`` on ``nproc`` local workers, each with the ``TF_CONFIG`` of a
    ``localhost`` cluster and ``threads`` threads; the first failing worker's exit status (0
    when all succeed). SIGTERM and Ctrl-C are passed on to every worker, which checkpoint
    and stop; workers left running ``timeout_s`` after another failed are terminated."""
    hosts = [f"localhost:{port}" for port in free_ports(nproc)]
    procs = []
    for index in range(nproc):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        env[LOCAL_RANK] = str(index)
        for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            env[name] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "1"
        procs.append(subprocess.Popen([sys.executable, "-m", "metaplug", *argv], env=env, start_new_session=True))

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _wait(procs, timeout_s)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> int:
    failed_at: float | None = None
    status = 0
    while any(proc.poll() is None for proc in procs):
        codes = [proc.returncode for proc in procs if proc.returncode not in (None, 0)]
        if codes and failed_at is None:
            failed_at, status = time.monotonic(), codes[0]
        if failed_at is not None and time.monotonic() - failed_at > timeout_s + 10:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.1)
    if status == 0:
        status = next((proc.returncode for proc in procs if proc.returncode != 0), 0)
    return status if status > 0 else (1 if status else 0)

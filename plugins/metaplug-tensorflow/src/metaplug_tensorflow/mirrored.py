"""One process over several devices with ``tf.distribute.MirroredStrategy``: the GPUs of one
machine (NCCL all-reduce), or the CPU split into logical devices (to check a configuration
without GPUs; no faster than one device).

The semantics are those of the multi-worker path (:mod:`metaplug.contract.distributed`):
each meta-batch is split into contiguous, equal slices (:func:`~metaplug.contract.distributed.task_slice`),
one per replica; every replica computes the meta-gradient of its tasks, the gradients are
averaged with the strategy's all-reduce, and each device applies the same outer step to its
copy of the meta-parameters (mirrored variables), so the result equals one device's to float
tolerance. Evaluation splits its episodes the same way (any number) and concatenates the
per-task results in order. Randomness that depends on a task's place in the meta-batch
(ResNet-12's DropBlock) sees the task's global place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metaplug.contract.distributed import shard, task_slice
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.models import meta_training


def split_cpu(count: int) -> None:
    """Split the CPU into ``count`` logical devices (only before TensorFlow's runtime starts;
    a runtime already split as far is accepted)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        found = len(tf.config.list_logical_devices("CPU"))
        if found < count:
            raise ConfigError(
                f"devices = {count} on the CPU: TensorFlow's runtime already started with {found} CPU device(s), "
                "and the CPU can be split only before it starts; build the backend first in a new process"
            ) from None


def choose_devices(device: str | None, count: int) -> list[str]:
    """The ``count`` devices of ``device``: ``gpu`` (or ``None`` where TensorFlow sees a GPU)
    the first ``count`` GPUs; ``cpu`` (or ``None`` without a GPU) the CPU split into ``count``
    logical devices. A numbered device (``gpu:1``) is one device, not several."""
    kind, _, index = (device or "").lower().partition(":")
    if index:
        raise ConfigError(
            f"device {device!r} is one device, but devices = {count}: give device 'gpu' (the first {count} GPUs; "
            "CUDA_VISIBLE_DEVICES picks which) or 'cpu'"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "gpu" or (not kind and gpus):
        if len(gpus) < count:
            fewer = f"use devices = {len(gpus)}" if len(gpus) > 1 else "use device 'cpu', or one device"
            raise ConfigError(f"devices = {count} but TensorFlow sees {len(gpus)} GPU(s); {fewer}")
        return [f"/gpu:{i}" for i in range(count)]
    split_cpu(count)
    return [f"/cpu:{i}" for i in range(count)]


def refuse_dependent_tasks(learner: Any) -> None:
    """Reptile's published inner loop carries its Adam state from task to task through the
    meta-batch: split over devices it would not give one device's result. (Mini-batch draws
    are made for the whole meta-batch before it is split, so they need no refusal here.)"""
    if getattr(getattr(learner, "options", None), "inner_optimizer", None) == "adam":
        raise ConfigError(
            f"{learner.name} with inner_optimizer 'adam' carries the inner Adam state from task to task within "
            "a meta-batch, so its tasks cannot be split over devices; use inner_optimizer 'sgd' or one device"
        )


def variable_of(value: Any) -> Any:
    """The TensorFlow variable behind ``value`` (a Keras 3 variable keeps it in ``_value``)."""
    return getattr(value, "_value", value) if not isinstance(value, tf.Variable) else value


STRATEGIES: dict[tuple[str, ...], Any] = {}
"""One strategy per set of devices and process: a second one over the same devices would
number its collective operations as the first did, and TensorFlow's runtime, which keeps
them by number, would mix them up."""


def strategy(devices: tuple[str, ...]) -> Any:
    """The process's ``MirroredStrategy`` over ``devices``."""
    if devices not in STRATEGIES:
        STRATEGIES[devices] = tf.distribute.MirroredStrategy(list(devices))
    return STRATEGIES[devices]


class Replicas:
    """The devices of one process and the ``MirroredStrategy`` over them, which trains and
    evaluates an algorithm's slices of every batch (see the module docstring)."""

    def __init__(self, devices: Sequence[str]) -> None:
        self.devices = list(devices)
        self.count = len(self.devices)
        self.strategy = strategy(tuple(self.devices))
        self._compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    @classmethod
    def over(cls, device: str | None, count: int) -> Replicas:
        """The replicas of :func:`choose_devices`."""
        return cls(choose_devices(device, count))

    # -- preparing an algorithm -------------------------------------------------------------
    def adopt(self, learner: Any) -> None:
        """Check that ``learner`` can be replicated (its variables are mirrored, its tasks
        independent) and make its outer optimizer average the gradients over the replicas."""
        refuse_dependent_tasks(learner)
        optimizer = learner.optimizer
        state = [optimizer.steps, optimizer.rate, *[v for slots in optimizer.slots.values() for v in slots]]
        variables = [*learner._saved.values(), *state]
        foreign = [v for v in variables if not self.strategy.extended.variable_created_in_scope(variable_of(v))]
        if foreign:
            raise ConfigError(
                f"{learner.name}: weight {foreign[0].name!r} was created outside the MirroredStrategy's scope "
                "(e.g. your own Keras model, built before metaplug), so it cannot be mirrored over devices; "
                "use devices = 1, or one worker per device (--nproc)"
            )
        apply = optimizer.apply
        anchor = optimizer.steps

        def averaged(grads: Sequence[tf.Tensor | None]) -> Any:
            context = tf.distribute.get_replica_context()
            if context is None or tf.distribute.in_cross_replica_context():  # called outside a replicated step
                return apply(grads)
            present = [i for i, g in enumerate(grads) if g is not None]  # None: frozen, skipped by the optimizer
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [grads[i] for i in present]) if present else []

            def update(_: Any, *local: tf.Tensor) -> Any:
                full: list[tf.Tensor | None] = [None] * len(grads)
                for i, g in zip(present, local, strict=True):
                    full[i] = g
                return apply(full)

            def merged(strategy: Any, *values: Any) -> Any:
                return strategy.extended.update(anchor, update, args=values, group=True)

            return context.merge_call(merged, args=tuple(means))

        optimizer.apply = averaged

    # -- the compiled, replicated entry points ------------------------------------------------
    def _distribute(self, learner: Any, batch: EpisodeBatch, extra: Sequence[tf.Tensor]) -> tuple[Any, ...]:
        """Every replica's slice of ``batch`` as tensors, and of ``extra`` (task axis first),
        placed on its device: per-replica values, one per argument of the compiled step."""
        devices = self.strategy.extended.worker_devices

        def values(context: Any) -> tuple[tf.Tensor, ...]:
            replica = context.replica_id_in_sync_group
            s = task_slice(batch.num_tasks, replica, self.count)
            with tf.device(devices[replica]):
                e = learner.backend.to_tensors(shard(batch, replica, self.count))
                return (e.support_x, e.support_y, e.query_x, e.query_y, *[tf.identity(t[s]) for t in extra])

        return tuple(self.strategy.experimental_distribute_values_from_function(values))

    def train_step(self, learner: Any, batch: EpisodeBatch, extra: Sequence[tf.Tensor]) -> dict[str, float]:
        """One outer step of ``learner`` on ``batch`` (with its ``extra`` training inputs),
        each replica training its slice: the means over all tasks of the metrics."""
        if batch.num_tasks % self.count:
            raise ConfigError(
                f"a meta-batch of {batch.num_tasks} tasks cannot be split evenly over {self.count} devices; "
                f"use a multiple of {self.count}"
            )
        fn = learner._train_fn
        key = ("train", fn)
        if key not in self._compiled:
            self._compiled[key] = self._replicated_train(learner, fn.python_function)
        with learner.precision.scope():
            result = self._compiled[key](*self._distribute(learner, batch, extra))
        per_replica = {k: self.strategy.experimental_local_results(v) for k, v in result.items()}
        return {k: float(np.mean([float(x) for x in values])) for k, values in per_replica.items()}

    def _replicated_train(self, learner: Any, step: Callable[..., Any]) -> Callable[..., Any]:
        def replica(*tensors: tf.Tensor) -> Any:
            context = tf.distribute.get_replica_context()
            first = context.replica_id_in_sync_group * tensors[0].shape[0]  # the slice's first task
            with meta_training(learner.backend.seed_value, learner.optimizer.steps, first_task=first):
                return step(*tensors)

        return tf.function(lambda *tensors: self.strategy.run(replica, args=tensors))

    def evaluate(
        self, learner: Any, batch: EpisodeBatch, steps: int, extra: Sequence[tf.Tensor]
    ) -> dict[str, np.ndarray]:
        """``learner``'s per-task evaluation of ``batch`` (``steps`` inner steps, ``extra``
        adaptation inputs), each replica evaluating its slice, concatenated in task order."""
        fn = learner._evaluate_fn
        key = ("evaluate", fn, steps)
        if key not in self._compiled:
            impl = fn.python_function
            self._compiled[key] = tf.function(
                lambda *tensors: self.strategy.run(lambda *t: impl(*t[:4], steps, *t[4:]), args=tensors)
            )
        with learner.precision.scope():
            result = self._compiled[key](*self._distribute(learner, batch, extra))
        return {
            k: np.concatenate([np.asarray(x) for x in self.strategy.experimental_local_results(v)])
            for k, v in result.items()
        }

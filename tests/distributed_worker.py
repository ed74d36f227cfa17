"""A few meta-training steps of every data-parallel algorithm on one backend, run on one
process (imported by the tests) or as one of several workers (``python distributed_worker.py
BACKEND OUT.npz [ALGORITHM...]``, started with torchrun's variables or ``TF_CONFIG``), or in one
process over several devices (``devices=N:BACKEND`` for BACKEND): rank 0 (the one process) saves
the meta-parameters after every step and the per-task results of an evaluation."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

ALGORITHMS: dict[str, dict[str, Any]] = {
    "maml": {"inner_lr": 0.3},
    "fomaml": {"inner_lr": 0.3},
    "anil": {"inner_lr": 0.3},
    "metasgd": {"inner_lr": 0.3},
    "protonet": {"freeze": ["features.0.*"]},  # frozen weights: no gradient to average (None on TensorFlow)
    "finetune": {},
    "reptile": {"inner_lr": 0.1},
    "mamlpp": {"inner_lr": 0.3},
    "matchingnet": {},
}
"""What the tests compare, with the options they run (``matchingnet``: torch only)."""

STEPS = 2
OPTIMIZER = "sgd"
"""Plain SGD steps by the averaged gradient itself; Adam divides each entry by its own size,
so an entry whose gradient is nearly zero can move by up to its rate on summation-order
noise alone."""
META_BATCH = 4
EVAL_TASKS = 5
"""Not a multiple of two workers: one takes three tasks, the other two."""


def spec() -> Any:
    from metaplug.contract.interfaces import TaskSpec

    return TaskSpec(problem="classification", input_shape=(6,), output_size=3, num_classes=8)


def batch(seed: int, tasks: int) -> Any:
    """``tasks`` 3-way 2-shot episodes over 8 classes with fixed means (the same on every worker)."""
    from metaplug.contract.interfaces import EpisodeBatch

    means = np.random.default_rng(123).normal(size=(8, 6))
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.choice(8, 3, replace=False) for _ in range(tasks)])

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.tile(np.arange(3), per_class)
        x = means[classes[:, labels]] + 0.5 * rng.normal(size=(tasks, len(labels), 6))
        return x.astype(np.float32), np.broadcast_to(labels, (tasks, len(labels))).astype(np.int64).copy()

    sx, sy = draw(2)
    qx, qy = draw(2)
    return EpisodeBatch(sx, sy, qx, qy, "classification", classes=classes)


def run(backend: str, workers: Any = None, names: list[str] | None = None, devices: int = 1) -> dict[str, np.ndarray]:
    """``{algorithm/step/parameter: array, algorithm/eval/metric: per-task array}`` for the
    algorithms ``names`` (default: all of :data:`ALGORITHMS`), on ``devices`` devices of
    this process."""
    import metaplug
    from metaplug.experiment.workers import ShardedAlgorithm

    found: dict[str, np.ndarray] = {}
    for name in names or list(ALGORITHMS):
        options = ALGORITHMS[name]
        learner = metaplug.algorithm(
            name,
            spec=spec(),
            backend=backend,
            optimizer=OPTIMIZER,
            lr=0.1,
            seed=0,
            device="cpu",
            devices=devices,
            **options,
        )
        if workers is not None:
            learner = ShardedAlgorithm(learner, workers, "classification")
        for step in range(STEPS):
            learner.meta_train_step(batch(step, META_BATCH))
            for key, value in learner.state_dict().items():
                if key.startswith("model.") or key.startswith("inner."):
                    found[f"{name}/{step}/{key}"] = np.asarray(value)
        for metric, values in learner.evaluate(batch(99, EVAL_TASKS)).items():
            found[f"{name}/eval/{metric}"] = np.asarray(values)
    return found


def main(backend: str, out: str, names: list[str]) -> None:
    from metaplug.plugins.discovery import registry

    if backend.startswith("devices="):  # one process over several devices: "devices=N:BACKEND"
        count, _, backend = backend.removeprefix("devices=").partition(":")
        np.savez(out, **run(backend, names=names, devices=int(count)))
        return

    workers = registry().get("backends", backend).load().join_workers(60.0, "cpu")
    assert workers is not None, "start with torchrun's variables or TF_CONFIG"
    found = run(backend, workers, names)
    if workers.rank == 0:
        np.savez(out, **found)
    workers.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown: gloo's threads can abort it ("terminate called ...")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

"""Meta-train the seed article's models with MAML and fine-tune its task learner, on
PyTorch or TensorFlow: ``python examples/own_models/train.py torch`` (or ``tensorflow``)."""

from __future__ import annotations

import sys

import numpy as np
from linear_tasks import LinearTasks

import metaplug


def models(backend: str) -> tuple[type, type]:
    """The MetaLearner and TaskLearner classes for ``backend``."""
    if backend == "torch":
        from torch_models import MetaLearner, TaskLearner
    else:
        from keras_models import MetaLearner, TaskLearner
    return MetaLearner, TaskLearner


def train(backend: str, algorithm: str, steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Train ``algorithm`` ("maml" on the MetaLearner, "finetune" on the TaskLearner) with
    Adam and MSE; the mean test loss before and after adapting to each task's 10 examples."""
    tasks = LinearTasks("train", seed=seed)
    meta_learner, task_learner = models(backend)
    if algorithm == "maml":
        options = {"model": meta_learner(), "inner_lr": 0.05, "inner_steps": 1, "test_inner_steps": 5}
    else:
        options = {"model": task_learner(), "inner_lr": 0.05, "test_inner_steps": 5}
    learner = metaplug.algorithm(
        algorithm, spec=tasks.spec, backend=backend, optimizer="adam", lr=0.005, seed=seed, **options
    )
    for _ in range(steps):
        learner.meta_train_step(tasks.sample(8))
    scores = learner.evaluate(LinearTasks("test", seed=seed).sample(100))
    return {"before": float(np.mean(scores["loss_before"])), "after": float(np.mean(scores["loss"]))}


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
    for name in ("maml", "finetune"):
        result = train(backend, name)
        print(f"{name} on {backend}: test MSE {result['before']:.3f} before adaptation, {result['after']:.3f} after")

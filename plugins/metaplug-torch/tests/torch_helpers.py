"""Small episodes and algorithms for the plugin's tests (float64 where gradients are compared)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.experiment.components import host_arguments
from metaplug.plugins.discovery import registry
from metaplug_torch.backend import Backend

SINUSOID = TaskSpec("regression", (1,), 1, None, "mlp")
IMAGES = TaskSpec("classification", (1, 16, 16), 3, 12, "conv4")
ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "metasgd", "protonet", "finetune")


def regression_batch(tasks: int = 3, shots: int = 5, queries: int = 4, seed: int = 0) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, (tasks, shots + queries, 1)).astype(np.float32)
    amplitude = rng.uniform(0.1, 5, (tasks, 1, 1))
    y = (amplitude * np.sin(x - rng.uniform(0, np.pi, (tasks, 1, 1)))).astype(np.float32)
    return EpisodeBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], "regression")


def image_batch(tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0) -> EpisodeBatch:
    """Random images whose class shifts their mean, so classes are learnable."""
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.choice(IMAGES.num_classes, ways, replace=False) for _ in range(tasks)])

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(ways), per_class)
        x = rng.normal(size=(tasks, ways * per_class, *IMAGES.input_shape))
        x += classes[:, labels][..., None, None, None] * 0.1
        return x.astype(np.float32), np.tile(labels, (tasks, 1)).astype(np.int64)

    (sx, sy), (qx, qy) = draw(shots), draw(queries)
    return EpisodeBatch(sx, sy, qx, qy, "classification", classes=classes.astype(np.int64))


def build(
    name: str,
    spec: TaskSpec,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    optimizer_options: dict | None = None,
    model: torch.nn.Module | None = None,
    **options,
):
    """Algorithm ``name`` on a freshly seeded standard model (16x16 conv4 with 8 filters), built
    as the host builds it (the rule its ``inner_rule`` names as ``rule=``, unless given)."""
    backend = Backend("cpu")
    backend.seed(seed)
    if model is None:
        model_options = {"filters": 8} if spec.default_model == "conv4" else {"hidden": (16, 16)}
        model = backend.build_model(ModelSpec(spec.default_model, spec.input_shape, spec.output_size, model_options))
    model = model.to(dtype)
    reg = registry()
    factory = functools.partial(reg.load("optimizers", optimizer, backend="torch"), lr=lr, **(optimizer_options or {}))
    algorithm = reg.load("algorithms", name, backend="torch")
    if name != "protonet" and "inner_lr" not in options:
        options["inner_lr"] = 0.1 if spec.problem == "classification" else 0.01
    if "rule" not in options:
        options.update(host_arguments(reg, algorithm, options, "torch"))
    return algorithm(backend=backend, model=model, spec=spec, optimizer=factory, **options)


def meta_gradient(algorithm, batch: EpisodeBatch) -> dict[str, np.ndarray]:
    """The gradient that one meta-training step hands to the outer optimizer (parameters
    the step does not use, such as ``finetune``'s unused model head, are left out)."""
    algorithm.optimizer.zero_grad(set_to_none=True)
    algorithm.meta_gradients(algorithm.episode_tensors(batch), batch)
    named = {**algorithm.params, **algorithm.extra}
    return {k: p.grad.detach().numpy().copy() for k, p in named.items() if p.grad is not None}

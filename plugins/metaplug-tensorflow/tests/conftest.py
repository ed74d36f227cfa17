"""Shared fixtures: small episodes and a factory for TensorFlow algorithms."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.experiment.components import host_arguments
from metaplug.plugins.discovery import registry
from metaplug.tasks import LabelledArrays, NWayKShot, SinusoidSampler
from metaplug_tensorflow.backend import Backend
from metaplug_tensorflow.optimizers import SGD

IMAGE = (1, 16, 16)
"""Small images: conv4 with max-pooling reduces 16x16 to 1x1."""


def small_images(seed: int = 0, classes: int = 8, per_class: int = 6) -> tuple[TaskSpec, NWayKShot]:
    """3-way episodes over random 16x16 images with a class-dependent pattern."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(classes, *IMAGE))
    x = patterns.repeat(per_class, axis=0) + 0.5 * rng.normal(size=(classes * per_class, *IMAGE))
    y = np.arange(classes).repeat(per_class)
    sampler = NWayKShot(LabelledArrays(x, y), ways=3, shots=2, queries=2, rng=np.random.default_rng(seed))
    spec = TaskSpec("classification", IMAGE, 3, num_classes=classes, default_model="conv4")
    return spec, sampler


@pytest.fixture(scope="session")
def sinusoid_batches() -> tuple[TaskSpec, list[EpisodeBatch]]:
    sampler = SinusoidSampler("train", seed=0, shots=5, queries=5)
    return sampler.spec, [sampler.sample(3) for _ in range(4)]


@pytest.fixture(scope="session")
def image_batches() -> tuple[TaskSpec, list[EpisodeBatch]]:
    spec, sampler = small_images()
    return spec, [sampler.sample(3) for _ in range(4)]


def model_spec(spec: TaskSpec) -> ModelSpec:
    if spec.default_model == "conv4":
        return ModelSpec("conv4", spec.input_shape, spec.output_size, {"filters": 4})
    return ModelSpec("mlp", spec.input_shape, spec.output_size, {"hidden": (8, 8)})


def make_algorithm(
    name: str,
    spec: TaskSpec,
    *,
    dtype: str = "float64",
    seed: int = 0,
    optimizer: Callable[..., Any] | None = None,
    **hyper: Any,
) -> Any:
    """A TensorFlow algorithm on a small standard model (SGD at rate 1 unless told), built as the
    host builds it (an ``inner_rule`` option is resolved through the registry to ``rule=``)."""
    backend = Backend(dtype=dtype)
    backend.seed(seed)
    model = backend.build_model(model_spec(spec))
    found = registry()
    cls = found.load("algorithms", name, backend="tensorflow")
    return cls(
        backend=backend,
        model=model,
        spec=spec,
        optimizer=optimizer or functools.partial(SGD, lr=1.0),
        **host_arguments(found, cls, hyper, "tensorflow"),
        **hyper,
    )


@pytest.fixture(scope="session")
def make() -> Callable[..., Any]:
    return make_algorithm


def meta_gradient(algorithm: Any, batch: EpisodeBatch) -> dict[str, np.ndarray]:
    """The outer gradient of one step, read off an SGD step at rate 1: ``before - after``."""
    before = algorithm.state_dict()
    algorithm.meta_train_step(batch)
    after = algorithm.state_dict()
    algorithm.load_state_dict(before)
    return {k: before[k] - after[k] for k in before if not k.startswith("optimizer.")}


@pytest.fixture(scope="session")
def grad() -> Callable[..., dict[str, np.ndarray]]:
    return meta_gradient

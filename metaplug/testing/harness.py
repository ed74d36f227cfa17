"""Build an algorithm the way the host does: backend, standard model, bound outer optimizer."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from metaplug.contract.interfaces import ModelSpec, TaskSpec
from metaplug.experiment.components import host_arguments, keyword_parameters, make_backend
from metaplug.plugins.discovery import registry


def cpu_backend(name: str) -> Any:
    """The backend ``name`` on the CPU when it takes ``device=`` (so that ``np.asarray`` reads
    its tensors on any machine), else as its constructor makes it."""
    record = registry().get("backends", name)
    parameters = keyword_parameters(record.load(), set())
    return make_backend(record, "cpu" if parameters is None or "device" in parameters else None)


def build_algorithm(
    name: str,
    backend: str,
    spec: TaskSpec,
    *,
    seed: int = 0,
    optimizer: str = "adam",
    lr: float = 1e-3,
    model: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    **hyperparameters: Any,
) -> Any:
    """``Algorithm(backend=..., model=..., spec=..., optimizer=...)`` for the registered
    ``name`` on ``backend``, its model (``model`` or ``spec.default_model``) initialised
    after ``backend.seed(seed)``, the outer optimizer ``optimizer`` bound to ``lr`` and, when
    the options name an ``inner_rule``, that rule as ``rule=``."""
    found = registry()
    algorithm_class = found.load("algorithms", name, backend=backend)
    factory = found.load("optimizers", optimizer, backend=backend)
    instance = found.load("backends", backend)()
    instance.seed(seed)
    network = instance.build_model(
        ModelSpec(model or spec.default_model, spec.input_shape, spec.output_size, dict(model_options or {}))
    )
    return algorithm_class(
        backend=instance,
        model=network,
        spec=spec,
        optimizer=functools.partial(factory, lr=lr),
        **host_arguments(found, algorithm_class, hyperparameters, backend),
        **hyperparameters,
    )

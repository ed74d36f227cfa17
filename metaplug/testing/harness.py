"""Build an algorithm the way the host does: backend, standard model, bound outer optimizer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaplug.contract.interfaces import TaskSpec
from metaplug.experiment.components import algorithm, keyword_parameters, make_backend
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
    the options name an ``inner_rule``, that rule as ``rule=`` (:func:`metaplug.algorithm`)."""
    return algorithm(
        name,
        spec=spec,
        backend=backend,
        model=model,
        model_options=model_options,
        optimizer=optimizer,
        lr=lr,
        seed=seed,
        **hyperparameters,
    )

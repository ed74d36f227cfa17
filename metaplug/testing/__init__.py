"""The conformance suite: base test classes that a plugin's own tests subclass.

Name your component and inherit every check that components of its kind must pass::

    from metaplug.testing import AlgorithmConformance

    class TestMyAlgo(AlgorithmConformance):
        algorithm = "myalgo"
        backend = "torch"

Importing this package imports nothing heavy; its classes import pytest and numpy,
never a deep-learning framework (the framework is imported when a test first
uses a component) and never a plugin: components are reached through the registry
and the host's interfaces only. ``docs/plugin-authors.md`` lists every check and
class attribute.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AlgorithmConformance": "metaplug.testing.algorithms",
    "BackendConformance": "metaplug.testing.backends",
    "ComponentConformance": "metaplug.testing.components",
    "ModelConformance": "metaplug.testing.models",
    "ObserverConformance": "metaplug.testing.observers",
    "OptimizerConformance": "metaplug.testing.optimizers",
    "TaskSamplerConformance": "metaplug.testing.samplers",
    "GlyphSampler": "metaplug.testing.tasks",
    "PrototypeSampler": "metaplug.testing.tasks",
    "build_algorithm": "metaplug.testing.harness",
    "FRAMEWORKS": "metaplug.testing.probe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metaplug.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__

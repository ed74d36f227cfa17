"""metaplug: a plugin-based meta-learning framework.

The host is framework-free. Its packages:

- :mod:`metaplug.contract`: what host and plugins share: the hooks, the component
  record, the interfaces, declared options, schedules.
- :mod:`metaplug.plugins`: discovery of the ``metaplug`` entry points, the registry
  of components, the host's own built-in components.
- :mod:`metaplug.experiment`: configuration, building, training, evaluation, benchmarks.
- :mod:`metaplug.tasks`: the built-in task samplers and dataset files.
- :mod:`metaplug.cli`: the ``metaplug`` command line.
- :mod:`metaplug.testing`: the conformance suite for plugin authors.

PyTorch and TensorFlow live in plugins. A plugin imports ``metaplug`` (``hookimpl``,
``Component``, ``Register``, ``Options``, ``option``) and :mod:`metaplug.contract`,
never :mod:`metaplug.plugins`.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "metaplug"
ENTRY_POINT_GROUP = "metaplug"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator that marks a plugin's hook implementations."""

from metaplug.contract.options import Options, option  # noqa: E402  (after hookimpl: no cycle)
from metaplug.contract.records import Component, Register  # noqa: E402
from metaplug.errors import MetaplugError  # noqa: E402

__all__ = ["Component", "MetaplugError", "Options", "Register", "__version__", "algorithm", "hookimpl", "option"]


def __getattr__(name: str) -> Any:
    """``metaplug.algorithm``, imported on first use (it needs plugin discovery)."""
    if name == "algorithm":
        from metaplug.experiment.components import algorithm

        return algorithm
    raise AttributeError(f"module 'metaplug' has no attribute {name!r}")

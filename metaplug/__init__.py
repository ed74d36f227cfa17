"""metaplug: a plugin-based meta-learning framework.

The host is framework-free: it defines the hook specifications
(:mod:`metaplug.hookspecs`), discovers plugins through the ``metaplug``
entry-point group (:mod:`metaplug.plugins`), looks components up by name
(:mod:`metaplug.registry`) and ships the built-in task samplers
(:mod:`metaplug.tasks`). PyTorch and TensorFlow live in plugins.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "metaplug"
ENTRY_POINT_GROUP = "metaplug"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator that marks a plugin's hook implementations."""

from metaplug.records import Component  # noqa: E402  (after hookimpl: no cycle)
from metaplug.errors import MetaplugError  # noqa: E402

__all__ = ["Component", "MetaplugError", "__version__", "hookimpl"]

"""Errors that reach the user as one line, never as a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MetaplugError(Exception):
    """A problem the user can fix; the CLI prints its message on one line."""


class UnknownComponentError(MetaplugError, LookupError):
    """No component of that kind and name is registered."""


class BackendNotSupportedError(MetaplugError, LookupError):
    """A component exists but has no implementation for the requested backend."""


class PluginError(MetaplugError):
    """A plugin broke the host's contract (bad record, duplicate name, ...)."""


class DatasetError(MetaplugError):
    """A dataset is missing, corrupt or cannot be downloaded."""


class ConfigError(MetaplugError, ValueError):
    """An option or configuration value is invalid."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""

"""Look components up by kind and name, with suggestions and clear errors."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from metaplug.contract.records import KINDS, Component
from metaplug.errors import (
    BackendNotSupportedError,
    ConfigError,
    PluginError,
    UnknownComponentError,
    suggest,
)

if TYPE_CHECKING:
    from metaplug.plugins.discovery import PluginInfo

_KIND_ALIASES = {
    "backend": "backends",
    "algorithm": "algorithms",
    "algo": "algorithms",
    "task-sampler": "task-samplers",
    "tasks": "task-samplers",
    "task": "task-samplers",
    "sampler": "task-samplers",
    "samplers": "task-samplers",
    "optimizer": "optimizers",
    "model": "models",
    "observer": "observers",
    "logger": "observers",
    "loggers": "observers",
}


BACKEND_KINDS: tuple[str, ...] = ("algorithms", "optimizers", "models")
"""Kinds whose records name the backends they run on (one record per implementation)."""


def normalize_kind(kind: str) -> str:
    """Map ``algorithm``, ``task_samplers``, ``tasks``... to a name in :data:`KINDS`."""
    key = kind.strip().lower().replace("_", "-")
    key = _KIND_ALIASES.get(key, key)
    if key not in KINDS:
        raise ConfigError(f"unknown component kind {kind!r}.{suggest(key, KINDS)} Kinds: {', '.join(KINDS)}")
    return key


def _singular(kind: str) -> str:
    return kind[:-1].replace("-", " ")


class Registry:
    """Every component that discovery found, keyed by kind, name and backend.

    ``plugins`` are the plugins discovery saw: a failed look-up names those that failed
    to load (and chains the first one's exception), since the component may be theirs.
    """

    def __init__(self, plugins: Sequence[PluginInfo] = ()) -> None:
        self._records: dict[str, dict[str, list[Component]]] = {k: defaultdict(list) for k in KINDS}
        self._plugins = plugins

    def clash(self, component: Component) -> Component | None:
        """The registered record with ``component``'s kind, name and a shared backend, if any."""
        return next(
            (c for c in self._records[component.kind].get(component.name, []) if _same_slot(c, component)), None
        )

    def add(self, component: Component) -> None:
        """Add a validated record. Clashing records are all kept: looking the name up names every plugin."""
        self._records[component.kind][component.name].append(component)

    def names(self, kind: str) -> list[str]:
        """Sorted component names of ``kind``."""
        return sorted(self._records[normalize_kind(kind)])

    def records(self, kind: str, name: str | None = None) -> list[Component]:
        """All records of ``kind`` (optionally of one ``name``), in discovery order."""
        kind = normalize_kind(kind)
        if name is not None:
            return list(self._records[kind].get(name, []))
        return [c for n in sorted(self._records[kind]) for c in self._records[kind][n]]

    def backends_for(self, kind: str, name: str) -> list[str]:
        """Backends that implement ``name`` (algorithms, optimizers and models)."""
        return sorted({b for c in self.records(kind, name) for b in c.backends})

    def get(self, kind: str, name: str, backend: str | None = None) -> Component:
        """The one record for ``kind``/``name`` (on ``backend``), or a helpful error."""
        kind = normalize_kind(kind)
        candidates = self._records[kind].get(name)
        if not candidates:
            known = self.names(kind)
            listing = f" Available: {', '.join(known)}" if known else f" No {kind} are installed"
            raise UnknownComponentError(
                f"unknown {_singular(kind)} {name!r}.{suggest(name, known)}{listing}{self._failures('.')}"
            ) from self._failure_cause()
        if backend is not None and kind in BACKEND_KINDS:
            supported = self.backends_for(kind, name)
            candidates = [c for c in candidates if backend in c.backends]
            if not candidates:
                raise BackendNotSupportedError(
                    f"{_singular(kind)} {name!r} is not available for backend {backend!r}; "
                    f"it supports: {', '.join(supported)}{self._failures('')}"
                ) from self._failure_cause()
        clash = _first_clash(candidates)
        if clash:
            first, second = clash
            raise PluginError(
                f"{_singular(kind)} {name!r} is registered twice: by {_origin(first)} and by "
                f"{_origin(second)}; uninstall one or disable it with METAPLUG_DISABLE_PLUGINS"
            )
        if len(candidates) > 1:
            raise ConfigError(
                f"{_singular(kind)} {name!r} exists for several backends "
                f"({', '.join(self.backends_for(kind, name))}); choose one"
            )
        return candidates[0]

    def load(self, kind: str, name: str, backend: str | None = None) -> Any:
        """Import and return the implementation behind :meth:`get`."""
        return self.get(kind, name, backend).load()

    def _failed(self) -> list[PluginInfo]:
        return [p for p in self._plugins if p.failed]

    def _failures(self, end: str) -> str:
        """``"; plugin 'x' (dist 1.0) failed to load: Error: ..."`` for each failed plugin, else ``end``."""
        return "".join(f"; {p.describe()} failed to load: {p.error}" for p in self._failed()) or end

    def _failure_cause(self) -> BaseException | None:
        return next((p.exception for p in self._failed() if p.exception is not None), None)


def _same_slot(a: Component, b: Component) -> bool:
    if not a.backends and not b.backends:
        return True
    return bool(set(a.backends) & set(b.backends))


def _first_clash(records: list[Component]) -> tuple[Component, Component] | None:
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            if _same_slot(a, b):
                return a, b
    return None


def _origin(c: Component) -> str:
    return f"plugin {c.plugin!r} ({c.distribution or 'unknown distribution'})"

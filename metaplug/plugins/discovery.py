"""Plugin discovery: load the ``metaplug`` entry points and collect their components.

Environment variables:

``METAPLUG_PLUGINS``
    Comma-separated plugin names (entry-point or distribution names): load only
    these external plugins. The host's built-in components always load.
``METAPLUG_DISABLE_PLUGINS``
    Comma-separated plugin names to skip.

A plugin that fails to import, breaks a hook spec or raises in a hook is
recorded with its error and skipped; every other plugin keeps working.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from metaplug import ENTRY_POINT_GROUP, PROJECT_NAME, __version__
from metaplug.contract import hookspecs
from metaplug.contract.records import KINDS, Component, _first_line, validate
from metaplug.errors import PluginError
from metaplug.plugins import builtin
from metaplug.plugins.registry import Registry

HOOK_FOR_KIND: dict[str, str] = {
    "backends": "register_backends",
    "algorithms": "register_algorithms",
    "task-samplers": "register_task_samplers",
    "optimizers": "register_optimizers",
}

BUILTIN_PLUGIN = "metaplug"


@dataclass
class PluginInfo:
    """One plugin as discovery saw it."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disabled

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
            "disabled": self.disabled,
        }


@dataclass
class Discovery:
    """The result of discovery: the pluggy manager, the plugins and their components."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    registry: Registry

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _names_from_env(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return {n.strip().lower() for n in raw.split(",") if n.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            found.append(ep)
    return sorted(found, key=lambda ep: (_dist_name(ep).lower(), ep.name))


def _dist_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.metadata["Name"] if ep.dist is not None else "unknown"


def _dist_version(ep: metadata.EntryPoint) -> str:
    return ep.dist.version if ep.dist is not None else "unknown"


def discover() -> Discovery:
    """Load every enabled plugin and register its components (imports no framework)."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    only = _names_from_env("METAPLUG_PLUGINS")
    disabled = _names_from_env("METAPLUG_DISABLE_PLUGINS") or set()

    plugins = [PluginInfo(BUILTIN_PLUGIN, PROJECT_NAME, __version__, builtin.__name__)]
    modules: dict[str, ModuleType] = {BUILTIN_PLUGIN: builtin}
    manager.register(builtin, name=BUILTIN_PLUGIN)

    for ep in _entry_points():
        info = PluginInfo(ep.name, _dist_name(ep), _dist_version(ep), ep.value)
        plugins.append(info)
        names = {ep.name.lower(), info.distribution.lower()}
        if (only is not None and not names & only) or names & disabled:
            info.disabled = True
            continue
        if ep.name in modules:
            info.error = f"plugin name {ep.name!r} is already used by {modules[ep.name].__name__}"
            continue
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # noqa: BLE001  (a broken plugin must not break the host)
            info.error = f"{type(exc).__name__}: {_first_line(exc)}"
            continue
        modules[ep.name] = module

    _reject_unknown_hooks(manager, plugins)
    registry = Registry()
    for info in plugins:
        if info.ok:
            _collect(manager, info, registry)
    return Discovery(manager, plugins, registry)


def _reject_unknown_hooks(manager: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
    """Like ``check_pending()``, but unregisters the offending plugin instead of failing."""
    by_name = {p.name: p for p in plugins}
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin)
            manager.unregister(exc.plugin)
            by_name[name].error = f"PluginValidationError: {_first_line(exc)}"


def _collect(manager: pluggy.PluginManager, info: PluginInfo, registry: Registry) -> None:
    """Call the plugin's hooks; register its components only if every hook succeeds."""
    plugin = manager.get_plugin(info.name)
    staged: list[Component] = []
    info.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
    try:
        for kind, hook_name in HOOK_FOR_KIND.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(component: Component, _kind: str = kind) -> None:
                    staged.append(validate(component, _kind))

                impl.function(*[{"register": register}[a] for a in impl.argnames])
    except Exception as exc:  # noqa: BLE001
        info.error = f"{type(exc).__name__}: {_first_line(exc)}"
        return
    for component in staged:
        component = _stamp(component, info)
        clash = registry.add(component)
        info.components.setdefault(component.kind, []).append(component.name)
        if clash is not None:
            info.error = f"PluginError: {component.describe()} duplicates {clash.describe()}"


def _stamp(component: Component, info: PluginInfo) -> Component:
    distribution = f"{info.distribution} {info.version}"
    return replace(component, plugin=info.name, distribution=distribution)


@functools.lru_cache(maxsize=1)
def discovery() -> Discovery:
    """The process-wide :func:`discover` result (computed once)."""
    return discover()


def registry() -> Registry:
    """The process-wide registry of components."""
    return discovery().registry


def reset() -> None:
    """Forget the cached discovery (tests, or after installing a plugin)."""
    discovery.cache_clear()


def add_commands(cli: Any) -> list[PluginInfo]:
    """Let plugins add CLI commands; return the plugins whose hook failed."""
    found = discovery()
    failed = []
    for impl in found.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(*[{"cli": cli}[a] for a in impl.argnames])
        except Exception as exc:  # noqa: BLE001
            info = next(p for p in found.plugins if p.name == impl.plugin_name)
            info.error = f"{type(exc).__name__} in register_commands: {_first_line(exc)}"
            failed.append(info)
    return failed


__all__ = ["Discovery", "PluginError", "PluginInfo", "discover", "discovery", "registry", "reset", "KINDS"]

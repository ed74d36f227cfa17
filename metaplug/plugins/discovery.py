"""Plugin discovery: load the ``metaplug`` entry points and collect their components.

Environment variables:

``METAPLUG_PLUGINS``
    Comma-separated plugin names (entry-point or distribution names): load only
    these external plugins. The host's built-in components always load.
``METAPLUG_DISABLE_PLUGINS``
    Comma-separated plugin names to skip.

A plugin that fails to import, breaks a hook spec or raises in a hook (``SystemExit``,
``KeyboardInterrupt`` and other ``BaseException``s included) is recorded with its whole
error (and the exception, for ``METAPLUG_DEBUG=1``) and skipped; every other plugin keeps
working. A real Ctrl-C during discovery still interrupts. First-party plugins load first,
so a third-party component that reuses a first-party name is the one reported and dropped.
A name in ``METAPLUG_PLUGINS`` that matches no installed plugin is a warning
(:attr:`Discovery.warnings`) that names the installed ones.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

import pluggy

from metaplug import ENTRY_POINT_GROUP, PROJECT_NAME, __version__
from metaplug.contract import hookspecs
from metaplug.contract.records import KINDS, Component, validate
from metaplug.errors import PluginError, suggest
from metaplug.plugins import builtin
from metaplug.plugins.registry import Registry

HOOK_FOR_KIND: dict[str, str] = {
    "backends": "register_backends",
    "algorithms": "register_algorithms",
    "task-samplers": "register_task_samplers",
    "optimizers": "register_optimizers",
    "models": "register_models",
    "observers": "register_observers",
}

BUILTIN_PLUGIN = "metaplug"

FIRST_PARTY: frozenset[str] = frozenset({PROJECT_NAME, "metaplug-torch", "metaplug-tensorflow", "metaplug-tensorboard"})
"""Distributions (canonical names) whose components win a name clash with any other plugin's."""


def canonical(name: str) -> str:
    """A distribution name normalised as in PEP 503 (``Metaplug_Foo`` -> ``metaplug-foo``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line: every line of the message (and its notes) kept, joined by ``"; "``."""
    lines = [*str(exc).splitlines(), *getattr(exc, "__notes__", ())]
    text = "; ".join(line.strip() for line in lines if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    warnings: list[str] = field(default_factory=list)
    loaded: bool = False
    """Its hooks ran without error (its components were collected, or dropped only for a clash)."""
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    """The exception behind :attr:`error`, if one was raised (its traceback is kept)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.disabled

    @property
    def failed(self) -> bool:
        """The plugin has an error and registered nothing: it failed to import, validate or run its hooks."""
        return self.error is not None and not self.loaded

    @property
    def first_party(self) -> bool:
        return canonical(self.distribution) in FIRST_PARTY

    def describe(self) -> str:
        """``plugin 'torch' (metaplug-torch 0.1.0)``."""
        return f"plugin {self.name!r} ({self.distribution} {self.version})"

    def fail(self, message: str, exc: BaseException | None = None) -> None:
        """Record an error (appended to an earlier one) and the exception behind it."""
        self.error = message if self.error is None else f"{self.error}; {message}"
        self.exception = self.exception or exc

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
            "warnings": self.warnings,
            "disabled": self.disabled,
        }


@dataclass
class Discovery:
    """The result of discovery: the pluggy manager, the plugins and their components."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    registry: Registry
    warnings: list[str] = field(default_factory=list)
    """Problems with the environment variables (not with one plugin)."""

    @property
    def errors(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]


def _names_from_env(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return {n.strip().lower() for n in raw.split(",") if n.strip()}


def _entry_points() -> list[metadata.EntryPoint]:
    """The group's entry points, first-party distributions first, then by distribution name."""
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            found.append(ep)
    return sorted(found, key=lambda ep: (canonical(_dist_name(ep)) not in FIRST_PARTY, _dist_name(ep).lower(), ep.name))


def _dist_name(ep: metadata.EntryPoint) -> str:
    return (ep.dist.metadata["Name"] if ep.dist is not None else None) or "unknown"


def _dist_version(ep: metadata.EntryPoint) -> str:
    return (ep.dist.version if ep.dist is not None else None) or "unknown"


def discover() -> Discovery:
    """Load every enabled plugin and register its components (imports no framework)."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    only = _names_from_env("METAPLUG_PLUGINS")
    disabled = _names_from_env("METAPLUG_DISABLE_PLUGINS") or set()

    plugins = [PluginInfo(BUILTIN_PLUGIN, PROJECT_NAME, __version__, builtin.__name__)]
    manager.register(builtin, name=BUILTIN_PLUGIN)
    entry_points = _entry_points()
    with _real_interrupts() as ctrl_c:
        for ep in entry_points:
            _load(manager, ep, plugins, only, disabled, ctrl_c)

    _reject_unknown_hooks(manager, plugins)
    registry = Registry(plugins)
    with _real_interrupts() as ctrl_c:
        for info in plugins:
            if info.ok:
                _collect(manager, info, registry, plugins, ctrl_c)
    return Discovery(manager, plugins, registry, _unknown_names(only, plugins))


def _load(
    manager: pluggy.PluginManager,
    ep: metadata.EntryPoint,
    plugins: list[PluginInfo],
    only: set[str] | None,
    disabled: set[str],
    ctrl_c: _CtrlC,
) -> None:
    """Import one entry point's module and register it, unless it is disabled or broken."""
    info = PluginInfo(ep.name, _dist_name(ep), _dist_version(ep), ep.value)
    plugins.append(info)
    names = {ep.name.lower(), info.distribution.lower()}
    if (only is not None and not names & only) or names & disabled:
        info.disabled = True
        return
    if manager.has_plugin(ep.name):
        other = next(p for p in plugins if p.name == ep.name and p.ok)
        info.fail(f"plugin name {ep.name!r} is already used by {other.describe()}")
        return
    try:
        module = ep.load()
        info.warnings = _unmarked_hooks(manager, module)
        manager.register(module, name=ep.name)
    except BaseException as exc:  # a broken plugin must not break the host
        ctrl_c.reraise_if_pressed(exc)
        info.fail(describe_exception(exc), exc)


class _CtrlC:
    """Whether the user pressed Ctrl-C, to tell it from a ``KeyboardInterrupt`` a plugin raises."""

    pressed = False

    def reraise_if_pressed(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt) and self.pressed:
            raise exc


@contextlib.contextmanager
def _real_interrupts() -> Iterator[_CtrlC]:
    """Note real Ctrl-Cs while plugin code runs (outside the main thread, every
    ``KeyboardInterrupt`` counts as real)."""
    ctrl_c = _CtrlC()

    def handler(signum: int, frame: Any) -> None:
        ctrl_c.pressed = True
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # Ctrl-C is ignored: only plugins raise it
        yield ctrl_c
        return
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:
        ctrl_c.pressed = True
        yield ctrl_c
        return
    try:
        yield ctrl_c
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _unknown_names(only: set[str] | None, plugins: list[PluginInfo]) -> list[str]:
    """A warning for each ``METAPLUG_PLUGINS`` name that matches no installed plugin."""
    external = [p for p in plugins if p.name != BUILTIN_PLUGIN]
    known = {n for p in external for n in (p.name.lower(), p.distribution.lower())}
    listing = ", ".join(sorted(p.name for p in external)) or "none"
    return [
        f"METAPLUG_PLUGINS names {name!r}, which is not an installed plugin.{suggest(name, known)} "
        f"Installed plugins: {listing}"
        for name in sorted((only or set()) - known)
    ]


def _hook_names(manager: pluggy.PluginManager) -> list[str]:
    return sorted(n for n in vars(hookspecs) if manager.parse_hookspec_opts(hookspecs, n) is not None)


def _unmarked_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """Warnings for functions named like a hook but not marked with ``@metaplug.hookimpl``."""
    return [
        f"{name}() is not marked with @metaplug.hookimpl, so metaplug never calls it"
        for name in _hook_names(manager)
        if callable(getattr(plugin, name, None)) and manager.parse_hookimpl_opts(plugin, name) is None
    ]


def _reject_unknown_hooks(manager: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
    """Like ``check_pending()``, but unregisters the offending plugin instead of failing."""
    by_name = {p.name: p for p in plugins}
    known = _hook_names(manager)
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin) or ""
            unknown = [c.name for c in manager.get_hookcallers(exc.plugin) or [] if not c.has_spec()]
            manager.unregister(exc.plugin)
            hook = unknown[0] if unknown else "?"
            hint = suggest(hook, known) or f" Known hooks: {', '.join(known)}."
            by_name[name].fail(f"PluginValidationError: unknown hook {hook!r}.{hint}", exc)


def _collect(
    manager: pluggy.PluginManager, info: PluginInfo, registry: Registry, plugins: list[PluginInfo], ctrl_c: _CtrlC
) -> None:
    """Call the plugin's hooks; register its components only if every hook succeeds."""
    plugin = manager.get_plugin(info.name)
    staged: list[Component] = []
    info.hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
    if not info.hooks and not info.warnings:
        info.warnings.append(
            f"module {info.module} has no function marked with @metaplug.hookimpl; "
            "does the entry point name the module that holds the hooks?"
        )
    try:
        for kind, hook_name in HOOK_FOR_KIND.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(component: Component, _kind: str = kind) -> None:
                    staged.append(validate(component, _kind))

                impl.function(*[{"register": register}[a] for a in impl.argnames])
    except BaseException as exc:
        ctrl_c.reraise_if_pressed(exc)
        info.fail(describe_exception(exc), exc)
        return
    info.loaded = True
    for component in staged:
        _add(_stamp(component, info), info, registry, plugins)


def _add(component: Component, info: PluginInfo, registry: Registry, plugins: list[PluginInfo]) -> None:
    """Register ``component`` unless a first-party record holds its slot; report clashes.

    A third-party record that clashes with a first-party one is dropped and reported on its
    plugin; when neither is first-party both are kept (looking the name up names both
    plugins) and the clash is reported on both.
    """
    clash = registry.clash(component)
    if clash is None:
        registry.add(component)
        info.components.setdefault(component.kind, []).append(component.name)
        return
    owner = next(p for p in plugins if p.name == clash.plugin)
    if owner.first_party and not info.first_party:
        info.fail(
            f"PluginError: {component.describe()} duplicates {clash.describe()}; "
            f"the first-party one is used and this one is ignored: rename it"
        )
        return
    registry.add(component)
    info.components.setdefault(component.kind, []).append(component.name)
    advice = "neither is usable until one is renamed, uninstalled or disabled with METAPLUG_DISABLE_PLUGINS"
    info.fail(f"PluginError: {component.describe()} duplicates {clash.describe()}; {advice}")
    owner.fail(f"PluginError: {clash.describe()} duplicates {component.describe()}; {advice}")


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
    """Let plugins add CLI commands; return the plugins whose hook failed.

    A hook that raises adds no command, and none may replace a command that exists already.
    """
    found = discovery()
    failed: list[PluginInfo] = []
    with _real_interrupts() as ctrl_c:
        for impl in found.manager.hook.register_commands.get_hookimpls():
            _add_commands_of(impl, cli, found, failed, ctrl_c)
    return failed


def _add_commands_of(impl: Any, cli: Any, found: Discovery, failed: list[PluginInfo], ctrl_c: _CtrlC) -> None:
    """Run one plugin's ``register_commands``; on any error, undo what it added and record it."""
    before = dict(cli.commands)
    try:
        impl.function(*[{"cli": cli}[a] for a in impl.argnames])
        replaced = sorted(n for n, c in before.items() if cli.commands.get(n) is not c)
        if replaced:
            raise PluginError(f"register_commands may not replace the command(s) {', '.join(replaced)}")
    except BaseException as exc:
        ctrl_c.reraise_if_pressed(exc)
        cli.commands.clear()
        cli.commands.update(before)
        info = next(p for p in found.plugins if p.name == impl.plugin_name)
        info.fail(f"in register_commands: {describe_exception(exc)}", exc)
        failed.append(info)


__all__ = [
    "FIRST_PARTY",
    "KINDS",
    "Discovery",
    "PluginError",
    "PluginInfo",
    "canonical",
    "describe_exception",
    "discover",
    "discovery",
    "registry",
    "reset",
]

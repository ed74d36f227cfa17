"""The light records that plugins register: what a component is, not its code."""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metaplug.errors import PluginError

KINDS: tuple[str, ...] = ("backends", "algorithms", "task-samplers", "optimizers", "models", "observers")
"""Component kinds, in the order the CLI lists them."""

PROBLEMS: tuple[str, ...] = ("regression", "classification")
"""Problem kinds that algorithms and task samplers declare."""

OPTIMIZER_ROLES: tuple[str, ...] = ("outer", "inner")
"""An optimizer updates the meta-parameters (outer) or adapts to a task (inner)."""

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Component:
    """A registered component, cheap to create: the implementation loads lazily.

    Plugins fill in the first fields; the host fills in ``kind``, ``plugin``
    and ``distribution`` when the record is registered.

    Example::

        register(Component(
            name="maml",
            summary="Model-Agnostic Meta-Learning, second order (Finn et al. 2017).",
            target="metaplug_torch.algorithms.maml:MAML",
            backends=("torch",),
            problems=("regression", "classification"),
        ))
    """

    name: str
    """Lower-case name users type (``maml``, ``sinusoid``); ``-`` and ``_`` allowed."""
    summary: str
    """One line that ``metaplug list`` shows."""
    target: str | Callable[[], Any]
    """``"package.module:attribute"``, or a zero-argument callable returning the implementation."""
    backends: tuple[str, ...] = ()
    """Algorithms, optimizers and models: the backends this implementation runs on."""
    problems: tuple[str, ...] = ()
    """Algorithms and task samplers: the problem kinds supported (see :data:`PROBLEMS`)."""
    role: str | None = None
    """Optimizers only: ``"outer"`` (meta-optimizer) or ``"inner"`` (inner-loop update rule)."""
    kind: str = ""
    plugin: str = ""
    distribution: str = ""

    def load(self) -> Any:
        """Import and return the implementation (a class or factory)."""
        try:
            if callable(self.target):
                return self.target()
            module_name, _, attribute = self.target.partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
            return obj
        except Exception as exc:
            raise PluginError(f"cannot load {self.describe()}: {type(exc).__name__}: {_first_line(exc)}") from exc

    def describe(self) -> str:
        """``algorithm 'maml' (torch) from plugin 'torch' (metaplug-torch 0.1.0)``."""
        kind = self.kind[:-1].replace("-", " ") if self.kind else "component"
        where = f" ({', '.join(self.backends)})" if self.backends and self.kind != "backends" else ""
        origin = f" from plugin {self.plugin!r}" if self.plugin else ""
        if self.distribution:
            origin += f" ({self.distribution})"
        return f"{kind} {self.name!r}{where}{origin}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description; a callable target is shown by its qualified name."""
        data = dataclasses.asdict(self)
        if callable(self.target):
            data["target"] = f"{self.target.__module__}:{self.target.__qualname__}"
        data["backends"] = list(self.backends)
        data["problems"] = list(self.problems)
        return data


Register = Callable[[Component], None]
"""The callback every ``register_*`` hook receives."""


def validate(component: Component, kind: str) -> Component:
    """Check a plugin's record for ``kind``; return it normalised (tuples, kind set)."""
    if not isinstance(component, Component):
        raise PluginError(f"register() takes a metaplug.Component, got {type(component).__name__}")
    c = dataclasses.replace(
        component, backends=tuple(component.backends), problems=tuple(component.problems), kind=kind
    )
    problems: list[str] = []
    if not isinstance(c.name, str) or not _NAME.match(c.name):
        problems.append(f"name {c.name!r} must be lower case letters, digits, '-' or '_'")
    if not isinstance(c.summary, str) or not c.summary.strip() or "\n" in c.summary.strip():
        problems.append("summary must be one non-empty line")
    if not callable(c.target) and not (isinstance(c.target, str) and _TARGET.match(c.target)):
        problems.append(f"target {c.target!r} must be 'module:attribute' or a callable")
    if kind in ("algorithms", "optimizers", "models") and not c.backends:
        problems.append("backends must name at least one backend")
    if kind in ("backends", "task-samplers", "observers") and c.backends:
        problems.append(f"{kind} do not declare backends")
    if kind in ("algorithms", "task-samplers"):
        bad = [p for p in c.problems if p not in PROBLEMS]
        if not c.problems or bad:
            problems.append(f"problems must be a non-empty subset of {list(PROBLEMS)}")
    if kind in ("models", "observers") and c.problems:
        problems.append(f"{kind} do not declare problems")
    if kind == "optimizers" and c.role not in OPTIMIZER_ROLES:
        problems.append(f"role must be one of {list(OPTIMIZER_ROLES)}")
    if kind != "optimizers" and c.role is not None:
        problems.append("only optimizers have a role")
    if problems:
        raise PluginError(f"invalid {kind[:-1]} record {c.name!r}: " + "; ".join(problems))
    return c


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

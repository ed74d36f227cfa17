"""Template files for ``metaplug new-plugin`` and the code that renders them.

One folder per plugin kind (``algorithm``, ``optimizer``, ``backend``, ``task-sampler``,
``observer``, ``model``), laid over ``common``. A file serves every backend, which it names as
``{{backend}}``, unless its name ends in ``.<backend>.tmpl`` (``algorithm.py.torch.tmpl``):
then it is rendered for that backend only, without the suffix. In file contents and paths, ``{{key}}`` is replaced
by the value of :class:`PluginNames`'s field ``key`` and the trailing ``.tmpl`` is dropped
(so that template sources are never imported or collected as tests).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from metaplug import __version__
from metaplug.errors import ConfigError

HERE = Path(__file__).resolve().parent
PLUGIN_KINDS: tuple[str, ...] = ("algorithm", "task-sampler", "optimizer", "backend", "observer", "model")
BACKENDS: tuple[str, ...] = ("torch", "tensorflow")
_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")
_KEY = re.compile(r"\{\{(\w+)\}\}")


def host_range(version: str = __version__) -> str:
    """The host versions a new plugin supports: this minor series (``>=0.1,<0.2``)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return f">={major}.{minor},<{major}.{minor + 1}"


@dataclass(frozen=True)
class PluginNames:
    """Every name a generated plugin uses, derived from the component name."""

    name: str
    """Component and entry-point name (``myalgo``)."""
    distribution: str
    """``metaplug-myalgo``."""
    package: str
    """``metaplug_myalgo``."""
    class_name: str
    """``Myalgo``."""
    kind: str
    """``algorithm``, ``task-sampler``, ``optimizer``, ``backend``, ``observer`` or ``model``."""
    backend: str
    host_range: str
    """Supported host versions, ``>=0.1,<0.2``."""
    dependencies: str
    """The ``dependencies`` entries of ``pyproject.toml``, one quoted requirement a line."""
    year: str

    @classmethod
    def from_name(cls, name: str, kind: str = "algorithm", backend: str = "torch") -> PluginNames:
        if kind not in PLUGIN_KINDS:
            raise ConfigError(f"unknown plugin kind {kind!r}; choose one of {', '.join(PLUGIN_KINDS)}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        name = name.strip().lower()
        name = name.removeprefix("metaplug-")
        if not _NAME.match(name) or "--" in name:
            raise ConfigError(
                f"plugin name {name!r} must be lower-case letters, digits and single '-', starting with a letter"
            )
        return cls(
            name=name,
            distribution=f"metaplug-{name}",
            package=f"metaplug_{name.replace('-', '_')}",
            class_name="".join(part.capitalize() for part in name.split("-")),
            kind=kind,
            backend=backend,
            host_range=host_range(),
            dependencies=_dependencies(kind, backend),
            year=str(datetime.date.today().year),
        )


def _dependencies(kind: str, backend: str) -> str:
    requirements = [f"metaplug{host_range()}", "numpy>=1.24"]
    if kind not in ("task-sampler", "observer"):  # framework-free kinds; the backend plugin brings its framework
        requirements.insert(1, f"metaplug-{backend}{host_range()}")
    return "\n".join(f'    "{r}",' for r in requirements)


def render(names: PluginNames, destination: Path) -> list[Path]:
    """Write the plugin package ``names`` describes into ``destination``; return the files written."""
    values = dataclasses.asdict(names)
    planned: dict[Path, str] = {}
    for folder in (HERE / "common", HERE / names.kind):
        for source in sorted(p for p in folder.rglob("*.tmpl") if "__pycache__" not in p.parts):
            relative = str(source.relative_to(folder)).removesuffix(".tmpl")
            shared, _, only = relative.rpartition(".")
            if only in BACKENDS:
                if only != names.backend:
                    continue
                relative = shared
            planned[destination / _substitute(relative, values)] = _substitute(source.read_text(), values)
    for path, text in planned.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(planned)


def _substitute(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template uses unknown key {{{{{key}}}}}")
        return values[key]

    return _KEY.sub(replace, text)

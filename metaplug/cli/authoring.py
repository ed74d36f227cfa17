"""``metaplug install``, ``uninstall`` and ``new-plugin``: add, remove and write plugins.

``install`` and ``uninstall`` run pip with the interpreter metaplug runs in
(``sys.executable -m pip``), so plugins land in metaplug's own environment; then a
fresh interpreter runs discovery and the result is shown as metaplug sees it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import click

from metaplug import ENTRY_POINT_GROUP, PROJECT_NAME
from metaplug.cli import cli, fail
from metaplug.cli.discovery import format_table
from metaplug.errors import ConfigError, MetaplugError, suggest
from metaplug.plugins.discovery import canonical

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRAS = re.compile(r"^(?P<path>.+?)(?P<extras>\[[A-Za-z0-9._,\s-]*\])$")


def installed() -> dict[str, str]:
    """``{canonical distribution name: version}`` of this environment, read afresh."""
    return {name: dist.version for name, dist in _distributions().items()}


def _distributions() -> dict[str, metadata.Distribution]:
    """The distributions Python imports from, by canonical name (the first on the path wins)."""
    import importlib

    importlib.invalidate_caches()
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        if dist.metadata["Name"]:
            found.setdefault(canonical(dist.metadata["Name"]), dist)
    return found


@dataclass(frozen=True)
class Installed:
    """One installed distribution and how pip could install exactly it again."""

    version: str
    source: str | None
    """A pip argument that reinstalls this version, or None when pip cannot re-fetch it (a folder)."""
    folder: str | None = None
    editable: bool = False
    record: str = ""
    """The installed files with their hashes (``RECORD``): a reinstall of the same version shows here."""


def snapshot() -> dict[str, Installed]:
    """Every installed distribution with its origin."""
    return {name: _origin(name, dist) for name, dist in _distributions().items()}


def _origin(name: str, dist: metadata.Distribution) -> Installed:
    """How ``dist`` was installed (PEP 610 ``direct_url.json``): what reinstalls it, or its folder."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        direct = {}
    url = direct.get("url") if isinstance(direct, dict) else None
    record = dist.read_text("RECORD") or ""
    if not isinstance(url, str):  # from an index: pip finds it by its version
        return Installed(dist.version, f"{name}=={dist.version}", record=record)
    local = unquote(urlparse(url).path) if url.startswith("file:") else None
    if "vcs_info" in direct:
        vcs = direct["vcs_info"]
        source = f"{name} @ {vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id', '')}"
        return Installed(dist.version, source, record=record)
    if "archive_info" in direct and (local is None or Path(local).is_file()):
        return Installed(dist.version, f"{name} @ {url}", record=record)
    editable = bool(direct.get("dir_info", {}).get("editable"))
    return Installed(dist.version, None, local or url, editable, record)


def pip(*args: str) -> int:
    """Run pip in metaplug's environment; its output goes straight to the terminal."""
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    return subprocess.run(command, check=False).returncode


def split_extras(spec: str) -> tuple[str, str]:
    """``("./pkg", "[test]")`` for ``"./pkg[test]"``; ``(spec, "")`` when there are none or ``spec`` exists."""
    match = _EXTRAS.match(spec)
    if match is None or Path(spec).exists():
        return spec, ""
    return match["path"], match["extras"]


def distribution_of(spec: str) -> str | None:
    """The distribution name that ``spec`` (a requirement, a project folder or a wheel) installs."""
    path = Path(split_extras(spec)[0])
    if path.is_dir():
        pyproject = path / "pyproject.toml"
        if pyproject.is_file():
            try:
                project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project")
            except OSError as exc:
                raise ConfigError(f"cannot read {pyproject}: {exc.strerror or exc}") from exc
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from exc
            name = project.get("name") if isinstance(project, dict) else None
            return canonical(name) if isinstance(name, str) else None
        return None
    if path.suffix == ".whl":
        return canonical(path.name.split("-")[0])
    if path.exists():
        return None
    match = _REQUIREMENT_NAME.match(spec)
    return canonical(match.group(1)) if match else None


def looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec or Path(spec).exists()


def discovered_in_fresh_process(distributions: list[str]) -> list[dict[str, Any]]:
    """Discovery's view of the plugins from ``distributions``, run in a new interpreter
    (so that newly installed ``.pth`` files and entry points are seen)."""
    code = (
        "import json, sys; from metaplug.cli.authoring import describe_plugins; "
        "print(json.dumps(describe_plugins(sys.argv[1:])))"
    )
    result = subprocess.run([sys.executable, "-c", code, *distributions], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no output"]
        raise MetaplugError(f"discovery failed in a fresh interpreter: {lines[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe_plugins(distributions: list[str]) -> list[dict[str, Any]]:
    """The plugins of ``distributions`` (canonical names) as discovery sees them in this process."""
    from metaplug.plugins.discovery import discover

    found = discover()
    wanted = {canonical(d) for d in distributions}
    described = []
    for plugin in found.plugins:
        if canonical(plugin.distribution) not in wanted:
            continue
        data = plugin.as_dict()
        data["records"] = [
            record.as_dict()
            for kind in plugin.components
            for record in found.registry.records(kind)
            if record.plugin == plugin.name
        ]
        described.append(data)
    return described


def show_plugins(plugins: list[dict[str, Any]]) -> None:
    """Print each plugin's components as a table."""
    for plugin in plugins:
        click.echo(
            f"plugin {plugin['name']!r} ({plugin['distribution']} {plugin['version']}), module {plugin['module']}:"
        )
        rows = [
            [
                r["kind"][:-1],
                r["name"],
                ", ".join(r["backends"]) or "-",
                ", ".join(r["problems"]) or r["role"] or "-",
                r["summary"],
            ]
            for r in plugin["records"]
        ]
        if rows:
            table = format_table(["kind", "name", "backends", "problems/role", "summary"], rows)
            click.echo("\n".join("  " + line for line in table.splitlines()))
        else:
            click.echo("  (no components)")
        for warning in plugin["warnings"]:
            click.echo(f"warning: {warning}", err=True)


def roll_back(before: dict[str, Installed], pip_args: Sequence[str] = (), targets: Sequence[str] = ()) -> str:
    """Undo an install: uninstall what is new, reinstall what was replaced (``pip_args`` reach
    that pip call too). Return what was done and what the environment holds now, including
    the ``targets`` that were installed before and were left as they were."""
    after = snapshot()
    added = sorted(set(after) - set(before))
    replaced = sorted(n for n in before if after.get(n) != before[n])
    if added:
        pip("uninstall", "--yes", "--quiet", *added)
    sources = [s for s in (before[n].source for n in replaced) if s]
    if sources:
        pip("install", "--quiet", "--no-deps", *sources, *pip_args)
    now = installed()
    restored = {n for n in replaced if before[n].source and now.get(n) == before[n].version}
    done = [f"removed {n} {after[n].version}" for n in added if n not in now]
    done += [f"reinstalled {n} {before[n].version}" for n in sorted(restored)]
    left = [f"{n} {now[n]} is still installed (pip could not remove it)" for n in added if n in now]
    left += [_not_restored(n, before[n], now.get(n)) for n in replaced if n not in restored]
    kept = [
        f"{n} {before[n].version} was installed before and stays installed"
        for n in targets
        if n in before and n not in replaced
    ]
    summary = ", ".join(done) or "nothing was changed"
    if not left:
        summary += ", the environment is as it was"
    return "; ".join([summary, *left, *kept])


def _not_restored(name: str, old: Installed, now: str | None) -> str:
    """What is installed instead of ``old`` and how to get it back."""
    if now is None:
        state = f"{name} {old.version} is gone"
    else:
        state = f"{name} {now} is installed in place of {'the previous ' if now == old.version else ''}{old.version}"
    if old.source is not None:
        return f"{state} (pip could not reinstall it: run 'pip install {old.source}')"
    option = "-e " if old.editable else ""
    return (
        f"{state}, which was installed from the folder {old.folder}{' (editable)' if old.editable else ''} "
        f"and cannot be fetched again; run 'metaplug install {option}{old.folder}' once that folder holds "
        f"a working version, or 'metaplug uninstall {name}'"
    )


@cli.command("install")
@click.argument("spec", metavar="NAME|PATH")
@click.option("-e", "--editable", is_flag=True, help="Install a project folder in editable (development) mode.")
@click.argument("pip_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PIP_OPTIONS]")
def install_command(spec: str, editable: bool, pip_args: tuple[str, ...]) -> None:
    """Install a plugin with pip into metaplug's environment and show its components.

    NAME|PATH is a requirement (metaplug-foo, metaplug-foo==1.2, metaplug-foo[extra]) or a
    project folder or wheel, with optional extras (./metaplug-foo[test]). Options after '--'
    go to pip. If pip fails, or the installed package is not a working metaplug plugin, what
    was installed is removed again and a version it replaced is reinstalled.
    """
    is_path = looks_like_path(spec)
    path, extras = split_extras(spec) if is_path else (spec, "")
    if is_path and not Path(path).expanduser().exists():
        raise ConfigError(f"no such file or folder: {path}")
    if editable and not (is_path and Path(path).expanduser().is_dir()):
        raise ConfigError(f"-e installs a project folder in development mode; {spec!r} is not a folder")
    expected = distribution_of(str(Path(path).expanduser()) if is_path else spec)
    if expected == canonical(PROJECT_NAME):
        raise ConfigError("metaplug itself is not a plugin; upgrade it with pip")
    before = snapshot()
    target = f"{Path(path).expanduser().resolve()}{extras}" if is_path else spec
    code = pip("install", *(["--editable"] if editable else []), target, *pip_args)
    if code != 0:
        fail(
            f"pip could not install {spec} (exit status {code}; its messages are above); "
            f"{roll_back(before, pip_args, [expected] if expected else [])}"
        )
    after = installed()
    changed = {n for n in after if n not in before or before[n].version != after[n]}
    candidates = sorted({expected} & set(after) if expected else changed) or sorted(changed)
    plugins = discovered_in_fresh_process(candidates) if candidates else []
    broken = [p for p in plugins if p["error"]]
    if not plugins or broken:
        why = (
            f"plugin {broken[0]['name']!r} does not load: {broken[0]['error']}"
            if broken
            else f"{', '.join(candidates) or spec} is not a metaplug plugin "
            f"(no entry point in group {ENTRY_POINT_GROUP!r})"
        )
        fail(f"{why}; {roll_back(before, pip_args, candidates)}")
    for plugin in plugins:
        click.echo(f"installed {plugin['distribution']} {plugin['version']}")
    show_plugins(plugins)


@cli.command("uninstall")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, hidden=True, help="Accepted for pip compatibility; never asks.")
def uninstall_command(name: str, yes: bool) -> None:
    """Uninstall a plugin (by distribution or plugin name) with pip.

    Refuses metaplug itself and distributions that are not metaplug plugins.
    """
    from metaplug.plugins.discovery import discovery

    wanted = canonical(name)
    if wanted == canonical(PROJECT_NAME):
        raise ConfigError("refusing to uninstall metaplug itself; use 'pip uninstall metaplug'")
    plugins = discovery().plugins
    by_plugin = {p.name: canonical(p.distribution) for p in plugins if p.distribution != PROJECT_NAME}
    distribution = by_plugin.get(name, wanted)
    versions = installed()
    if distribution not in versions:
        known = sorted(set(by_plugin) | set(by_plugin.values()))
        raise ConfigError(
            f"no installed plugin or distribution named {name!r}.{suggest(name, known)}"
            + (f" Installed plugins: {', '.join(sorted(by_plugin))}." if by_plugin else "")
        )
    if not any(ep.group == ENTRY_POINT_GROUP for ep in metadata.distribution(distribution).entry_points):
        raise ConfigError(
            f"{distribution} is not a metaplug plugin (no entry point in group "
            f"{ENTRY_POINT_GROUP!r}); refusing to uninstall it, use pip"
        )
    removed = [p for p in plugins if canonical(p.distribution) == distribution]
    code = pip("uninstall", "--yes", distribution)
    if code != 0:
        fail(f"pip could not uninstall {distribution} (exit status {code}; its messages are above)")
    still = discovered_in_fresh_process([distribution])
    if still:
        fail(
            f"{distribution} was uninstalled but discovery still finds plugin {still[0]['name']!r} "
            f"(another copy on the path?)"
        )
    for plugin in removed:
        counts = ", ".join(f"{k}: {', '.join(v)}" for k, v in plugin.components.items()) or "no components"
        click.echo(f"uninstalled {distribution} {versions[distribution]}: plugin {plugin.name!r} ({counts})")
    if not removed:
        click.echo(f"uninstalled {distribution} {versions[distribution]}")


@cli.command("new-plugin")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(["algorithm", "task-sampler", "optimizer", "backend", "observer", "model"]),
    default="algorithm",
    show_default=True,
    help="What the plugin adds.",
)
@click.option(
    "--backend",
    type=click.Choice(["torch", "tensorflow"]),
    default="torch",
    show_default=True,
    help="Framework of an algorithm, optimizer, backend or model (task samplers and observers need none).",
)
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Where to write it [./metaplug-NAME].")
def new_plugin_command(name: str, kind: str, backend: str, directory: str | None) -> None:
    """Write a ready-to-install plugin package: pyproject, hooks, a working
    implementation, conformance tests, README and LICENSE."""
    import shlex

    from metaplug.templates import PluginNames, render

    names = PluginNames.from_name(name, kind, backend)
    destination = Path(directory or names.distribution)
    try:
        if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
            raise ConfigError(f"{destination} already exists and is not empty; choose another --dir")
        written = render(names, destination)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"cannot write the plugin to {destination}: {reason}; choose another --dir") from exc
    click.echo(f"wrote {names.kind} plugin {names.distribution!r} to {destination}/:")
    for path in written:
        click.echo(f"  {path.relative_to(destination)}")
    folder = str(destination) if destination.is_absolute() or str(destination).startswith(".") else f"./{destination}"
    click.echo(
        f"next: metaplug install -e {shlex.quote(folder + '[test]')} && cd {shlex.quote(str(destination))} "
        f"&& python -m pytest"
    )

"""``metaplug plugins``, ``metaplug list`` and ``metaplug info``: what is installed."""

from __future__ import annotations

import inspect
import json
import traceback
from typing import Any

import click

from metaplug.cli import cli, debugging
from metaplug.cli.text import plain_text
from metaplug.contract.records import KINDS
from metaplug.errors import ConfigError, suggest
from metaplug.experiment.components import describe_options
from metaplug.experiment.tomlio import format_value
from metaplug.plugins.discovery import HOOK_FOR_KIND, discovery, registry
from metaplug.plugins.registry import BACKEND_KINDS, normalize_kind


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins, their components, load errors and warnings."""
    found = discovery()
    if as_json:
        echo_json([p.as_dict() for p in found.plugins])
    else:
        rows = []
        for p in found.plugins:
            status = "disabled" if p.disabled else ("error" if p.error else "ok")
            counts = ", ".join(f"{len(v)} {k}" for k, v in p.components.items()) or "-"
            rows.append([p.name, p.distribution, p.version, status, counts])
        click.echo(format_table(["plugin", "distribution", "version", "status", "components"], rows))
    echo_errors(lines=not as_json)
    if not as_json:
        for p in found.plugins:
            for warning in p.warnings:
                click.echo(f"warning: {p.describe()}: {warning}", err=True)


def echo_errors(lines: bool = True) -> None:
    """On stderr, each plugin error as one ``error:`` line, after its traceback with ``METAPLUG_DEBUG=1``."""
    for p in discovery().errors:
        if debugging() and p.exception is not None:
            click.echo("".join(traceback.format_exception(p.exception)).rstrip(), err=True)
        if lines:
            click.echo(f"error: {p.describe()}: {p.error}", err=True)


@cli.command("list")
@click.argument("kind", required=False)
@click.option("--backend", help="Only components available for this backend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(kind: str | None, backend: str | None, as_json: bool) -> None:
    """List components: backends, algorithms, task-samplers, optimizers or models (default: all)."""
    kinds = [normalize_kind(kind)] if kind else list(KINDS)
    reg = registry()
    if backend is not None and backend not in reg.names("backends"):
        known = reg.names("backends")
        raise ConfigError(
            f"unknown backend {backend!r}.{suggest(backend, known)} Installed backends: {', '.join(known) or 'none'}"
        )
    listing: dict[str, list[dict[str, Any]]] = {}
    for k in kinds:
        entries = []
        for name in reg.names(k):
            records = reg.records(k, name)
            backends = reg.backends_for(k, name)
            if backend and k in BACKEND_KINDS and backend not in backends:
                continue
            first = records[0]
            entries.append(
                {
                    "name": name,
                    "summary": first.summary,
                    "backends": backends,
                    "problems": sorted({p for r in records for p in r.problems}),
                    "role": first.role,
                    "plugins": sorted({r.plugin for r in records}),
                }
            )
        listing[k] = entries
    echo_errors()
    if as_json:
        echo_json(listing if kind is None else listing[kinds[0]])
        return
    for k, entries in listing.items():
        if kind is None:
            click.echo(f"{k}:")
        if not entries:
            click.echo("  (none installed; see 'metaplug plugins')" if kind is None else "(none installed)")
            continue
        headers = ["name", "summary"]
        if k in BACKEND_KINDS:
            headers.insert(1, "backends")
        if k in ("algorithms", "task-samplers"):
            headers.insert(-1, "problems")
        if k == "optimizers":
            headers.insert(-1, "role")
        rows = [[_cell(e[h]) for h in headers] for e in entries]
        table = format_table(headers, rows)
        click.echo("\n".join(("  " + line) if kind is None else line for line in table.splitlines()))
        if kind is None:
            click.echo()


@cli.command("info")
@click.argument("kind")
@click.argument("name")
@click.option("--backend", help="Which backend's implementation to describe.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(kind: str, name: str, backend: str | None, as_json: bool) -> None:
    """Describe one component: its record, docstring and options."""
    kind = normalize_kind(kind)
    reg = registry()
    if backend is None and kind in BACKEND_KINDS:
        backends = reg.backends_for(kind, name) if reg.records(kind, name) else []
        backend = backends[0] if len(backends) >= 1 else None
    record = reg.get(kind, name, backend)
    implementation = record.load()
    data = record.as_dict()
    data["doc"] = inspect.cleandoc(implementation.__doc__ or "")
    data["options"] = [o.as_dict() for o in describe_options(implementation, kind)]
    if kind in BACKEND_KINDS:
        data["all_backends"] = reg.backends_for(kind, name)
    if as_json:
        echo_json(data)
        return
    click.echo(f"{record.describe()}\n  {record.summary}")
    click.echo(f"  target: {data['target']}")
    for field in ("backends", "problems", "role"):
        if data.get(field):
            click.echo(f"  {field}: {_cell(data[field])}")
    if data.get("all_backends", data["backends"]) != data["backends"]:
        click.echo(f"  all backends: {_cell(data['all_backends'])} (choose with --backend)")
    if data["doc"]:
        click.echo("\n" + plain_text(data["doc"]))
    if data["options"]:
        click.echo("\noptions:")
        for o in data["options"]:
            help_text = f"  # {o['help']}" if o["help"] else ""
            default = " (required)" if o["required"] else f" = {_toml(o['default'])}"
            click.echo(f"  {o['name']}: {o['type']}{default}{help_text}")


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return "-" if value in (None, "") else str(value)


def _toml(value: Any) -> str:
    """A default as configuration files write it (``None``, else TOML, else its ``repr``)."""
    if value is None:
        return "None"
    try:
        return format_value(value)
    except ConfigError:
        return repr(value)


__all__ = ["HOOK_FOR_KIND", "echo_json", "format_table"]

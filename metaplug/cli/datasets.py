"""``metaplug datasets``: each known dataset, whether it is here and verified, and what goes where."""

from __future__ import annotations

from pathlib import Path

import click

from metaplug.cli import cli
from metaplug.cli.discovery import echo_json, format_table


@cli.command("datasets")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Root of the datasets (default: METAPLUG_DATA_DIR, else ~/.cache/metaplug/data).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets_command(data_dir: str | None, as_json: bool) -> None:
    """List the known datasets: found and verified, found, missing or checksum mismatch.

    Archives are hashed on first sight (MD5 against the published checksum, or SHA-256
    against a SHA256SUMS file beside them) and remembered by size and modification time.
    """
    from metaplug.tasks.catalog import states
    from metaplug.tasks.layouts import MISSING

    def announce(path: Path) -> None:
        size = path.stat().st_size
        if size > 1 << 28:
            click.echo(f"hashing {path} ({size / 1e9:.1f} GB) once; its digests are remembered", err=True)

    found = states(data_dir, announce)
    if as_json:
        echo_json([s.as_dict() for s in found])
        return
    click.echo(format_table(["dataset", "status", "folder"], [[s.name, s.state, s.folder] for s in found]))
    for s in found:
        click.echo(f"\n{s.name} ({s.title}; licence: {s.licence})")
        if s.state != MISSING:
            click.echo(f"  {s.detail}")
        else:
            click.echo(f"  put in {s.folder}: {s.expected}")
            click.echo(f"  {s.source}")

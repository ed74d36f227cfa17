"""``--threads``: the backend's thread count, for every command that computes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from metaplug.contract.threads import ENV, parse_threads
from metaplug.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def _set_threads(context: click.Context, parameter: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    try:
        count = parse_threads(value, "--threads")
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--threads "), context, parameter) from None
    os.environ[ENV] = "auto" if count is None else str(count)


def threads_option(command: F) -> F:
    """Add ``--threads N|auto`` (sets ``METAPLUG_THREADS`` for the backend, and for child processes)."""
    return click.option(
        "--threads",
        callback=_set_threads,
        expose_value=False,
        metavar="N|auto",
        help=f"Threads of the backend's operations (default: ${ENV}, else auto: the usable CPUs "
        "less the load of other processes, one for models as small as the sinusoid MLP).",
    )(command)

"""The ``metaplug`` command line: a click group whose errors are one line long."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from typing import Any

import click

from metaplug import __version__
from metaplug.errors import MetaplugError, suggest


class MetaplugGroup(click.Group):
    """A click group that suggests command names and turns errors into one line."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(f"no such command {name!r}.{suggest(name, self.list_commands(ctx))}")
        return super().resolve_command(ctx, args)


@click.group(cls=MetaplugGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="metaplug")
def cli() -> None:
    """metaplug: plugin-based meta-learning on PyTorch and TensorFlow.

    Plugins are discovered through the 'metaplug' entry-point group;
    METAPLUG_PLUGINS and METAPLUG_DISABLE_PLUGINS choose which load.
    """


def _load_commands() -> None:
    """Import the command modules of this package (each adds its commands), then plugins'."""
    import importlib
    import pkgutil

    from metaplug.plugins.discovery import add_commands, discovery

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    add_commands(cli)
    for warning in discovery().warnings:
        click.echo(f"warning: {warning}", err=True)


def debugging() -> bool:
    """Whether ``METAPLUG_DEBUG`` asks for tracebacks."""
    return bool(os.environ.get("METAPLUG_DEBUG"))


def fail(message: str, code: int = 1) -> None:
    """Print ``Error: message`` on stderr as one line and exit with ``code``."""
    say_error(message)
    sys.exit(code)


def say_error(message: str) -> None:
    """Print ``Error: message`` on stderr as one line."""
    text = " ".join(str(message).split())
    click.echo(f"Error: {text}", err=True)


def ignore_further_interrupts() -> None:
    """After a Ctrl-C or SIGTERM was handled: one more Ctrl-C while the interpreter shuts
    down must not print a traceback, so the rest of the exit ignores it."""
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)


INVOCATION: list[str] = []
"""The arguments of this ``metaplug`` command (what ``train --nproc`` passes on to its workers)."""


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Entry point of the ``metaplug`` script and ``python -m metaplug``."""
    INVOCATION[:] = sys.argv[1:] if args is None else list(args)
    try:
        _load_commands()
        cli.main(args=args, prog_name=prog_name or "metaplug", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        ignore_further_interrupts()
        fail("aborted", 130)
    except click.UsageError as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except MetaplugError as exc:
        if debugging():  # the traceback, with the plugin error it may be chained to, then the usual line
            traceback.print_exception(exc)
        fail(str(exc), getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        ignore_further_interrupts()
        fail("interrupted", 130)
    except MemoryError as exc:
        fail(
            f"out of memory ({exc or 'MemoryError'}); use fewer or smaller episodes at once "
            "(--meta-batch-size, --ways, --shots, --queries, evaluate --batch)"
        )
    except Exception as exc:  # no tracebacks for users; METAPLUG_DEBUG=1 shows them
        if debugging():
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (set METAPLUG_DEBUG=1 for the traceback)")

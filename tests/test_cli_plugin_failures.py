"""What a plugin author sees when a plugin gets something wrong, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_assertions import assert_one_line_error
from doubles import DOUBLES
from plugin_factory import write_plugin

IMPORT_FAILURE = (
    "plugin 'myalgo' (metaplug-myalgo 0.1.0) failed to load: "
    "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
)


def run(site: Path, *args: str, debug: bool = False, extra_path: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("METAPLUG_DEBUG", "METAPLUG_PLUGINS", "METAPLUG_DISABLE_PLUGINS")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(site), *map(str, extra_path), env.get("PYTHONPATH", "")] if p)
    if debug:
        env["METAPLUG_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def site(tmp_path) -> Path:
    return tmp_path / "site"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_wrong_argument_name_shows_pluggys_whole_message(site):
    write_plugin(
        site,
        "bad_argument",
        """
        from metaplug import hookimpl

        @hookimpl
        def register_algorithms(registr):
            pass
    """,
    )
    cause = (
        "PluginValidationError: Plugin 'bad_argument' for hook 'register_algorithms'; hookimpl definition: "
        "register_algorithms(registr); Argument(s) {'registr'} are declared in the hookimpl but can not be "
        "found in the hookspec"
    )
    listing = {p["name"]: p for p in json.loads(run(site, "plugins", "--json").stdout)}
    assert listing["bad_argument"]["error"] == cause
    table = run(site, "plugins")
    assert table.returncode == 0
    assert error_lines(table.stderr) == [f"error: plugin 'bad_argument' (metaplug-bad-argument 1.0.0): {cause}"]


def test_debug_shows_the_plugins_traceback(site):
    write_plugin(site, "myalgo", "import no_such_dependency_xyz\n", distribution="metaplug-myalgo", version="0.1.0")
    result = run(site, "plugins", debug=True)
    assert result.returncode == 0
    assert "Traceback" in result.stderr and f'{site / "myalgo.py"}", line 1' in result.stderr
    assert f"error: {IMPORT_FAILURE.replace(' failed to load', '')}" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("info", "algorithm", "myalgo"),
        ("train", "--backend", "numpy", "--algorithm", "myalgo", "--dry-run"),
    ],
)
def test_unknown_component_names_the_plugin_that_failed_to_load(site, args):
    write_plugin(site, "myalgo", "import no_such_dependency_xyz\n", distribution="metaplug-myalgo", version="0.1.0")
    result = run(site, *args, extra_path=(DOUBLES,))
    assert_one_line_error(result, "unknown algorithm 'myalgo'.", IMPORT_FAILURE)


def test_debug_traceback_of_a_failed_lookup_chains_the_plugins_error(site):
    write_plugin(site, "myalgo", "import no_such_dependency_xyz\n", distribution="metaplug-myalgo", version="0.1.0")
    result = run(site, "info", "algorithm", "myalgo", debug=True)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in result.stderr
    assert "The above exception was the direct cause of the following exception" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: unknown algorithm 'myalgo'.") and last.endswith(IMPORT_FAILURE)


def test_list_reports_plugins_that_failed_to_load(site):
    write_plugin(site, "myalgo", "import no_such_dependency_xyz\n", distribution="metaplug-myalgo", version="0.1.0")
    result = run(site, "list", "algorithms", "--json")
    assert result.returncode == 0 and isinstance(json.loads(result.stdout), list)
    assert error_lines(result.stderr) == [f"error: {IMPORT_FAILURE.replace(' failed to load', '')}"]


def test_forgotten_hookimpl_is_a_warning(site):
    write_plugin(
        site,
        "forgot_marker",
        """
        from metaplug import Component

        def register_algorithms(register):
            register(Component(name="never", summary="s", target="m:C", backends=("b",), problems=("regression",)))
    """,
    )
    result = run(site, "plugins")
    assert result.returncode == 0
    assert (
        "warning: plugin 'forgot_marker' (metaplug-forgot-marker 1.0.0): register_algorithms() is not marked "
        "with @metaplug.hookimpl, so metaplug never calls it"
    ) in result.stderr.splitlines()
    listing = {p["name"]: p for p in json.loads(run(site, "plugins", "--json").stdout)}
    assert listing["forgot_marker"]["hooks"] == [] and len(listing["forgot_marker"]["warnings"]) == 1


def test_broken_register_commands_does_not_take_the_cli_down(site):
    write_plugin(
        site,
        "raising_commands",
        """
        from metaplug import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command("half-added")
            def half_added():
                pass
            raise SystemExit("commands gave up")
    """,
    )
    write_plugin(
        site,
        "hijacker",
        """
        import click
        from metaplug import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command("list")
            def hijacked():
                click.echo("hijacked")
    """,
    )
    listing = run(site, "list", "task-samplers")
    assert listing.returncode == 0 and "sinusoid" in listing.stdout and "hijacked" not in listing.stdout
    errors = error_lines(run(site, "plugins").stderr)
    assert (
        "error: plugin 'raising_commands' (metaplug-raising-commands 1.0.0): "
        "in register_commands: SystemExit: commands gave up"
    ) in errors
    assert (
        "error: plugin 'hijacker' (metaplug-hijacker 1.0.0): in register_commands: "
        "PluginError: register_commands may not replace the command(s) list"
    ) in errors
    assert "no such command 'half-added'" in run(site, "half-added").stderr


def test_clash_with_a_first_party_name_is_the_newcomers_error_and_training_still_works(site, tmp_path):
    write_plugin(
        site,
        "copycat",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_task_samplers(register):
            register(Component(name="sinusoid", summary="Mine.", target="nowhere:Nothing", problems=("regression",)))
    """,
    )
    listing = {p["name"]: p for p in json.loads(run(site, "plugins", "--json", extra_path=(DOUBLES,)).stdout)}
    assert listing["metaplug"]["error"] is None
    assert "the first-party one is used and this one is ignored" in listing["copycat"]["error"]
    trained = run(
        site,
        "train",
        "--backend",
        "numpy",
        "--algorithm",
        "linear-maml",
        "--tasks",
        "sinusoid",
        "--iterations",
        "2",
        "--meta-batch-size",
        "2",
        "--val-every",
        "0",
        "--test-tasks",
        "2",
        "--run-dir",
        str(tmp_path / "run"),
        "-q",
        extra_path=(DOUBLES,),
    )
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "results.json").is_file()

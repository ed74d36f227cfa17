"""Plugins cannot take the CLI down: exits and interrupts at import, unknown names in METAPLUG_PLUGINS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from doubles import DOUBLES
from plugin_factory import write_plugin

from metaplug.plugins import discovery as plugins

ABRUPT = {
    "exiter": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    "interrupter": ("raise KeyboardInterrupt('from the plugin')\n", "KeyboardInterrupt: from the plugin"),
    "boomer": ("class Boom(BaseException):\n    pass\n\nraise Boom('bye')\n", "Boom: bye"),
    "hook_exiter": (
        "import sys\nfrom metaplug import hookimpl\n\n@hookimpl\ndef register_algorithms(register):\n    sys.exit(4)\n",
        "SystemExit: 4",
    ),
}


def run(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("METAPLUG_PLUGINS", "METAPLUG_DISABLE_PLUGINS")}
    path = os.pathsep.join([str(site), str(DOUBLES), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "metaplug", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": path, **env},
        timeout=120,
        preexec_fn=ctrl_c_delivered,
    )


def ctrl_c_delivered() -> None:
    """In the child, before it starts Python: Ctrl-C neither ignored nor blocked, whatever this
    process inherited or a library left (the tests of Ctrl-C need it delivered)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("abrupt") / "site"
    for module, (source, _) in ABRUPT.items():
        write_plugin(folder, module, source)
    return folder


def test_plugins_that_exit_or_interrupt_at_import_are_named_and_the_rest_works(site, tmp_path):
    assert run(site, "--help").returncode == 0
    listed = run(site, "plugins", "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    found = {p["name"]: p for p in json.loads(listed.stdout)}
    table = run(site, "plugins")
    for module, (_, error) in ABRUPT.items():
        assert found[module]["error"] == error, found[module]
        assert f"error: plugin {module!r} (metaplug-{module.replace('_', '-')} 1.0.0): {error}" in table.stderr
    assert found["double"]["error"] is None and found["double"]["components"]["backends"] == ["numpy"]
    small = ["--backend", "numpy", "--algorithm", "linear-maml", "--iterations", "2", "--meta-batch-size", "2"]
    small += ["--val-every", "0", "--test-tasks", "2", "-q"]
    trained = run(site, "train", *small, "--run-dir", str(tmp_path / "r"))
    assert trained.returncode == 0, trained.stderr
    assert "no installed plugin or distribution named 'nothing'" in run(site, "uninstall", "nothing").stderr


def test_a_real_ctrl_c_during_discovery_still_interrupts(tmp_path):
    site = write_plugin(tmp_path / "site", "presser", "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    done = run(site, "plugins")
    assert done.returncode == 130 and done.stderr.strip() == "Error: interrupted"


def test_an_unknown_name_in_metaplug_plugins_is_a_warning_naming_the_installed_ones(site):
    done = run(site, "list", "backends", METAPLUG_PLUGINS="doubel")
    assert done.returncode == 0
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, done.stderr
    text, _, listing = warnings[0].partition(" Installed plugins: ")
    assert text == "warning: METAPLUG_PLUGINS names 'doubel', which is not an installed plugin. Did you mean 'double'?"
    assert {"double", *ABRUPT} <= set(listing.split(", "))
    assert run(site, "list", "backends", METAPLUG_PLUGINS="double").stderr.count("warning: METAPLUG_PLUGINS") == 0


def test_discovery_records_unknown_names(monkeypatch):
    monkeypatch.setenv("METAPLUG_PLUGINS", "nosuchplugin")
    found = plugins.discover()
    assert len(found.warnings) == 1 and "'nosuchplugin', which is not an installed plugin" in found.warnings[0]
    monkeypatch.delenv("METAPLUG_PLUGINS")
    assert plugins.discover().warnings == []

"""Run discovery in a fresh interpreter and report what it imported.

``python -m metaplug.testing.probe REQUEST`` reads a JSON request (plugin, kind,
name, backend, sys.path) and prints a JSON report: the frameworks imported by the
plugin's entry-point module and by discovery, and whether discovery imported the
component's implementation module (it must wait for ``Component.load()``). The conformance
suite runs it in a subprocess, so the test process's own imports cannot hide a
heavy import.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any

FRAMEWORKS: tuple[str, ...] = ("torch", "tensorflow", "jax", "keras")
"""Top-level modules that discovery must never import."""


def frameworks_loaded() -> list[str]:
    return sorted(name for name in FRAMEWORKS if name in sys.modules)


def _entry_module(plugin: str) -> str:
    from importlib import metadata

    from metaplug import ENTRY_POINT_GROUP
    from metaplug.plugins.discovery import BUILTIN_PLUGIN, builtin

    if plugin == BUILTIN_PLUGIN:
        return builtin.__name__
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == plugin:
            return ep.value.partition(":")[0].strip()
    raise LookupError(f"no entry point {plugin!r} in group {ENTRY_POINT_GROUP!r}")


def probe(request: dict[str, Any]) -> dict[str, Any]:
    """What importing the plugin's entry-point module and running discovery imports."""
    import importlib

    report: dict[str, Any] = {"before": frameworks_loaded()}
    module = _entry_module(request["plugin"])
    report["entry_module"] = module
    importlib.import_module(module)
    report["after_entry_module"] = frameworks_loaded()

    from metaplug.plugins.discovery import discover

    found = discover()
    report["after_discovery"] = frameworks_loaded()
    report["plugin_error"] = next((p.error for p in found.plugins if p.name == request["plugin"]), None)
    record = found.registry.get(request["kind"], request["name"], request.get("backend"))
    target = record.target if isinstance(record.target, str) else None
    target_module = target.partition(":")[0] if target else None
    report["target_module"] = target_module
    report["target_imported_before_load"] = bool(target_module and target_module in sys.modules)
    return report


@functools.lru_cache(maxsize=256)
def _run(request_json: str) -> dict[str, Any]:
    env = dict(os.environ)
    plugin = json.loads(request_json)["plugin"]
    env["METAPLUG_PLUGINS"] = plugin  # only this plugin (the host's own components always load)
    env.pop("METAPLUG_DISABLE_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", __name__, request_json],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"discovery probe failed in a fresh interpreter:\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_probe(plugin: str, kind: str, name: str, backend: str | None) -> dict[str, Any]:
    """:func:`probe` in a fresh interpreter that sees this process's ``sys.path`` (cached)."""
    request = {"plugin": plugin, "kind": kind, "name": name, "backend": backend, "path": list(sys.path)}
    return _run(json.dumps(request, sort_keys=True))


def main(argv: list[str]) -> None:
    request = json.loads(argv[0])
    sys.path[:] = [p for p in request["path"] if p] + [p for p in sys.path if p not in request["path"]]
    print(json.dumps(probe(request)))


if __name__ == "__main__":
    main(sys.argv[1:])

"""A throwaway environment for install tests: a venv that sees the project's
packages (through a ``.pth`` hook) but receives its own installs, so tests never
change the shared environment."""

from __future__ import annotations

import os
import site
import subprocess
import sysconfig
import venv
from pathlib import Path


def make_env(folder: Path) -> Path:
    """Create the venv in ``folder``; return its Python."""
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(folder)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shared = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(shared))
    Path(purelib, "_shared_environment.pth").write_text(lines)
    return python


def run(python: Path, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python -m metaplug ARGS`` (or ``python ARGS`` when the first is ``-m``/``-c``)."""
    command = [str(python), *args] if args and args[0] in ("-m", "-c") else [str(python), "-m", "metaplug", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("METAPLUG_PLUGINS", "METAPLUG_DISABLE_PLUGINS")}
    env["PIP_NO_INDEX"] = "1"  # never reach an index from tests
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)

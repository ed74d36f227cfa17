"""Who may import whom: the host never imports a plugin, a plugin never reaches into the
host's plugin machinery, and both backend plugins have the same files."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "metaplug"
PLUGINS = ROOT / "plugins"
FIRST_PARTY_PACKAGES = ("metaplug_torch", "metaplug_tensorflow", "metaplug_matchingnet", "metaplug_tensorboard")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources(*folders: Path | Iterable[Path]) -> list[Path]:
    """The Python files under ``folders`` (templates aside)."""
    roots = [f for group in folders for f in ([group] if isinstance(group, Path) else group)]
    return sorted(p for root in roots for p in root.rglob("*.py") if "templates" not in p.parts)


@pytest.mark.parametrize("path", sources(HOST), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_host_imports_no_plugin(path):
    plugins = {m for m in imported_modules(path) if m.split(".")[0] in FIRST_PARTY_PACKAGES}
    assert not plugins, f"{path.relative_to(ROOT)} imports {sorted(plugins)}"


@pytest.mark.parametrize("path", sources(PLUGINS.glob("*/src")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_plugin_reaches_into_the_hosts_plugin_machinery(path):
    machinery = {m for m in imported_modules(path) if m == "metaplug.plugins" or m.startswith("metaplug.plugins.")}
    assert not machinery, f"{path.relative_to(ROOT)} imports {sorted(machinery)}"


def test_both_backend_plugins_have_the_same_modules():
    torch_package = PLUGINS / "metaplug-torch" / "src" / "metaplug_torch"
    tensorflow_package = PLUGINS / "metaplug-tensorflow" / "src" / "metaplug_tensorflow"
    framework_specific = {
        "torch": {"batching.py", "stacked.py"},  # stacked.py: the task axis TensorFlow's models always have
        "tensorflow": {"_tf.py", "layout.py", "mirrored.py"},  # MirroredStrategy: torch runs one process per GPU
    }

    def modules(package: Path, framework: str) -> set[str]:
        return {str(p.relative_to(package)) for p in package.rglob("*.py")} - framework_specific[framework]

    assert modules(torch_package, "torch") == modules(tensorflow_package, "tensorflow")
    for plugin in ("metaplug-torch", "metaplug-tensorflow"):
        assert (PLUGINS / plugin / "LICENSE").is_file() and (PLUGINS / plugin / "README.md").is_file()

"""Build throwaway installed distributions (``*.dist-info`` + module) for discovery tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_plugin(
    site: Path,
    module: str,
    source: str,
    distribution: str | None = None,
    version: str = "1.0.0",
    entry_point: str | None = None,
) -> Path:
    """Write ``module.py`` and an installed distribution whose ``metaplug`` entry point names it."""
    site.mkdir(parents=True, exist_ok=True)
    distribution = distribution or f"metaplug-{module.replace('_', '-')}"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[metaplug]\n{entry_point or module} = {module}\n")
    return site


ALGORITHM_PLUGIN = """
from metaplug import Component, hookimpl

@hookimpl
def register_algorithms(register):
    register(Component(
        name="{name}",
        summary="A test algorithm.",
        target="{module}_impl:Algorithm",
        backends=({backends}),
        problems=("regression",),
    ))
"""


def algorithm_plugin(
    site: Path, module: str, name: str = "testalgo", backends: str = '"fakeb",', distribution: str | None = None
) -> Path:
    """A plugin registering algorithm ``name`` whose implementation lives in ``<module>_impl``."""
    write_plugin(
        site, module, ALGORITHM_PLUGIN.format(name=name, module=module, backends=backends), distribution=distribution
    )
    (site / f"{module}_impl.py").write_text(
        "class Algorithm:\n"
        "    '''Implementation docstring.'''\n"
        "    def __init__(self, *, backend=None, model=None, spec=None, optimizer=None, inner_lr: float = 0.5):\n"
        "        self.inner_lr = inner_lr\n"
    )
    return site

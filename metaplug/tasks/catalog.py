"""The datasets metaplug knows, for ``metaplug datasets``: where each belongs and its state."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metaplug.tasks import omniglot
from metaplug.tasks.cifar100 import CIFAR_FS, FC100
from metaplug.tasks.cub import CUB
from metaplug.tasks.layouts import Announce, DatasetInfo, Expected, Layout, status
from metaplug.tasks.mini_imagenet import MINI_IMAGENET
from metaplug.tasks.tiered_imagenet import TIERED_IMAGENET

OMNIGLOT = DatasetInfo(
    name="omniglot",
    title="Omniglot",
    folder="omniglot",
    source="Omniglot comes from https://github.com/brendenlake/omniglot (python/; or pass download=True)",
    licence="MIT",
    layouts=(
        Layout(
            "the original archives",
            tuple(Expected((f"{stem}.zip",), md5) for stem, md5 in omniglot.ARCHIVES.items()),
        ),
    ),
)

KNOWN: tuple[DatasetInfo, ...] = (OMNIGLOT, MINI_IMAGENET, TIERED_IMAGENET, CIFAR_FS, FC100, CUB)


@dataclass(frozen=True)
class DatasetState:
    """One dataset's line in ``metaplug datasets``."""

    name: str
    title: str
    state: str
    """One of :data:`metaplug.tasks.layouts.STATES`."""
    folder: str
    detail: str
    expected: str
    """What to put in ``folder``: each layout's files."""
    source: str
    licence: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def states(data_root: str | os.PathLike[str] | None = None, announce: Announce | None = None) -> list[DatasetState]:
    """The state of every known dataset under ``data_root`` (default: ``METAPLUG_DATA_DIR``);
    ``announce`` is told of each archive about to be hashed."""
    result = []
    for info in KNOWN:
        folder: Path = info.root(None, None if data_root is None else str(data_root))
        state, detail = status(info, folder, announce)
        expected = "; or ".join(
            f"{layout.describe()} ({layout.name}{', needs allow_pickle' if layout.needs_pickle else ''})"
            for layout in info.layouts
        )
        result.append(
            DatasetState(info.name, info.title, state, str(folder), detail, expected, info.source, info.licence)
        )
    return result

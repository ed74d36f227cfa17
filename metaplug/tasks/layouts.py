"""What a standard dataset's folder must hold, how it is verified, and its status.

A :class:`DatasetInfo` names the folder a dataset lives in (under
``METAPLUG_DATA_DIR``), where the data comes from, its licence, and one or more
:class:`Layout` s: the sets of files that hold it (an archive as published, an
extracted folder, a pickle cache). Each file is checked against its published MD5
where one exists, or against the folder's ``SHA256SUMS`` (``sha256sum``'s format)
when the user supplies one; digests of files already checked are remembered by
path, size and modification time, so a 138 GB archive is hashed once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from metaplug.errors import DatasetError
from metaplug.tasks.datasets import cache_dir, data_dir, read_sha256sums

SPLIT_NAMES = ("train", "val", "test")
VERIFIED, FOUND, MISSING, MISMATCH = "found and verified", "found, not checksummed", "missing", "checksum mismatch"
STATES = (VERIFIED, FOUND, MISSING, MISMATCH)
"""What :func:`status` reports: every file checked; present but some file has no checksum to
check; a needed file absent; a file whose digest does not match."""


@dataclass(frozen=True)
class Expected:
    """One file a layout needs: ``names`` are alternatives (the first found is used;
    a trailing ``/`` names a folder); ``md5`` is the published checksum of the file,
    ``split`` the only split that needs it (``None``: every split)."""

    names: tuple[str, ...]
    md5: str | None = None
    split: str | None = None

    def describe(self) -> str:
        return " or ".join(self.names)

    def find(self, folder: Path) -> Path | None:
        for name in self.names:
            path = folder / name.rstrip("/")
            if path.is_dir() if name.endswith("/") else path.is_file():
                return path
        return None


@dataclass(frozen=True)
class Layout:
    """One way of holding a dataset: the files it takes."""

    name: str
    files: tuple[Expected, ...]
    needs_pickle: bool = False

    def needed(self, split: str | None) -> list[Expected]:
        return [e for e in self.files if split is None or e.split in (None, split)]

    def describe(self) -> str:
        return ", ".join(e.describe() for e in self.files)


@dataclass(frozen=True)
class DatasetInfo:
    """A standard dataset: where it lives, where it comes from, how it may be laid out."""

    name: str
    title: str
    folder: str
    source: str
    licence: str
    layouts: tuple[Layout, ...]

    def root(self, root: str | os.PathLike[str] | None = None, data_root: str | None = None) -> Path:
        """``root`` if given, else ``data_root/<folder>``, else ``$METAPLUG_DATA_DIR/<folder>``."""
        if root is not None:
            return Path(root).expanduser()
        return Path(data_root).expanduser() / self.folder if data_root is not None else data_dir(self.folder)


@dataclass(frozen=True)
class Found:
    """The layout found in a folder and the path of each of its needed files."""

    layout: Layout
    folder: Path
    paths: dict[Expected, Path]

    def path(self, name: str) -> Path:
        """The found path of the expected file that has ``name`` among its alternatives."""
        for expected, path in self.paths.items():
            if name in expected.names:
                return path
        raise KeyError(name)


def locate(info: DatasetInfo, folder: Path, split: str | None = None, allow_pickle: bool = True) -> Found:
    """The first layout whose files (for ``split``; all when ``None``) are all in ``folder``.

    Raises one line naming the first missing file of the most complete layout, the
    folder searched, and where the dataset comes from.
    """
    best: tuple[int, Layout, Expected] | None = None
    refused: Layout | None = None
    for layout in info.layouts:
        needed = layout.needed(split)
        paths = {e: e.find(folder) for e in needed}
        missing = [e for e, p in paths.items() if p is None]
        if not missing and (allow_pickle or not layout.needs_pickle):
            return Found(layout, folder, {e: p for e, p in paths.items() if p is not None})
        if not missing:  # a pickle layout, complete but not allowed
            refused = refused or layout
            continue
        present = len(needed) - len(missing)
        if best is None or present > best[0]:
            best = (present, layout, missing[0])
    if refused is not None:
        raise DatasetError(
            f"{info.title} in {folder} is a pickle cache ({refused.describe()}); pickles can run code, so "
            f"metaplug reads them only with tasks.allow_pickle=true (numpy arrays only, converted once into "
            f"its cache); or supply {_alternatives(info, refused)}"
        )
    assert best is not None
    _, layout, missing_file = best
    where = folder / missing_file.names[0].rstrip("/")
    also = f" (or {', '.join(missing_file.names[1:])})" if len(missing_file.names) > 1 else ""
    raise DatasetError(
        f"{info.title}: {where}{also} not found ({layout.name}: {layout.describe()}); {info.source}; "
        f"set tasks.root or METAPLUG_DATA_DIR to the folder holding them ('metaplug datasets' lists what goes where)"
    )


def _alternatives(info: DatasetInfo, skip: Layout) -> str:
    return "; or ".join(f"{layout.describe()} ({layout.name})" for layout in info.layouts if layout is not skip)


Announce = Callable[[Path], None]
"""Told of each file about to be hashed (not of files whose digests are remembered)."""


def verify(info: DatasetInfo, found: Found, announce: Announce | None = None) -> bool:
    """Check every found file that has a published MD5 or a ``SHA256SUMS`` entry.

    Returns whether every file was checked (``False`` when some have no checksum);
    raises one line naming the first file whose digest does not match.
    """
    sums = read_sha256sums(found.folder)
    complete = True
    for expected, path in found.paths.items():
        if path.is_dir():
            complete = False
            continue
        recorded = sums.get(path.name)
        if recorded is None and expected.md5 is None:
            complete = False
            continue
        digests = file_digests(path, announce)
        if recorded is not None and digests["sha256"] != recorded:
            raise DatasetError(
                f"{path} does not match its SHA-256 in {path.parent / 'SHA256SUMS'} (got {digests['sha256']}); "
                f"the file is corrupt or another version: replace it ({info.source})"
            )
        if recorded is None and expected.md5 is not None and digests["md5"] != expected.md5:
            raise DatasetError(
                f"{path} has MD5 {digests['md5']}, but the published {path.name} has MD5 {expected.md5}: "
                f"the file is corrupt or not the original; get it again ({info.source})"
            )
    return complete


def status(info: DatasetInfo, folder: Path, announce: Announce | None = None) -> tuple[str, str]:
    """``(state, detail)`` of ``info`` in ``folder``: state is one of :data:`STATES`."""
    try:
        found = locate(info, folder)
    except DatasetError as exc:
        return MISSING, str(exc)
    try:
        checked = verify(info, found, announce)
    except DatasetError as exc:
        return MISMATCH, str(exc)
    files = ", ".join(str(p) for p in found.paths.values())
    if checked:
        return VERIFIED, f"{found.layout.name}: {files}"
    return FOUND, f"{found.layout.name}: {files} (some have no published checksum; add a SHA256SUMS file to check them)"


def file_digests(path: Path, announce: Announce | None = None) -> dict[str, str]:
    """MD5 and SHA-256 of ``path``, computed in one pass and remembered by path, size and mtime
    (``announce(path)`` first when they must be computed)."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns]
    remembered = _read_remembered()
    entry = remembered.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and {"md5", "sha256"} <= set(entry):
        return {"md5": entry["md5"], "sha256": entry["sha256"]}
    if announce is not None:
        announce(path)
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    digests = {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}
    remembered[key] = {"stamp": stamp, **digests}
    _write_remembered(remembered)
    return digests


def _remembered_path() -> Path:
    return cache_dir() / "checksums.json"


def _read_remembered() -> dict[str, object]:
    try:
        data = json.loads(_remembered_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_remembered(data: dict[str, object]) -> None:
    path = _remembered_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # remembering digests only saves time


def read_class_list(dataset: str, split: str) -> list[str]:
    """The class names of ``split`` shipped in ``metaplug/tasks/splits/<dataset>/`` (comments skipped)."""
    if split not in SPLIT_NAMES:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    folder = Path(__file__).resolve().parent / "splits" / dataset
    path = folder / f"{split}.txt"
    if not path.is_file():
        path = folder / f"{split}.csv"
    return [line.split(",")[0].strip() for line in _lines(path)]


def read_class_groups(dataset: str, split: str) -> dict[str, str]:
    """``{class: group}`` from a shipped ``<split>.csv`` of ``class,group`` rows."""
    path = Path(__file__).resolve().parent / "splits" / dataset / f"{split}.csv"
    return dict(tuple(part.strip() for part in line.split(",", 1)) for line in _lines(path))  # type: ignore[misc]


def _lines(path: Path) -> Iterable[str]:
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield line.strip()

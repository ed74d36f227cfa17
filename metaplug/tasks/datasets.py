"""Where datasets live, how they are verified and downloaded, and where caches go.

``METAPLUG_DATA_DIR``
    Root folder of local datasets, one sub-folder each (``omniglot``, ``mini-imagenet``,
    ``tiered-imagenet``, ``cifar-100``, ``cub-200-2011``). Default: ``~/.cache/metaplug/data``.
``METAPLUG_CACHE_DIR``
    Folder for decoded caches. Default: ``~/.cache/metaplug``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from metaplug.errors import DatasetError


def cache_dir() -> Path:
    return Path(os.environ.get("METAPLUG_CACHE_DIR") or Path.home() / ".cache" / "metaplug").expanduser()


def data_dir(dataset: str) -> Path:
    root = os.environ.get("METAPLUG_DATA_DIR") or cache_dir() / "data"
    return Path(root).expanduser() / dataset


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def read_sha256sums(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` from a ``SHA256SUMS`` file in ``folder``, if there is one."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return {}
    try:
        text = sums.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read {sums}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{sums} is not a text file of SHA-256 sums; replace it or delete it") from exc
    entries = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            entries[parts[1].lstrip("*")] = parts[0].lower()
    return entries


def download(url: str, target: Path, md5: str) -> None:
    """Download ``url`` to ``target`` atomically, verifying its MD5 checksum."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        actual = file_digest(Path(tmp), "md5")
        if actual != md5:
            raise DatasetError(f"download of {url} has MD5 {actual}, expected {md5}; try again later")
        os.replace(tmp, target)
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"cannot download {url}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

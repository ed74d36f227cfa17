"""Decoded datasets cached on disk as uint8 arrays and memory-mapped: decoded once, never
held in memory whole, never as float32.

A cache entry is one ``.npy`` file, ``$METAPLUG_CACHE_DIR/decoded/<name>-<key>.npy``. The
key is a digest of what the array was decoded from (:func:`files_key`: the source files'
names, sizes and modification times) and how (image size, colour, format version), so a
changed, added or removed file gives a new entry and an unchanged folder is never decoded
twice. An entry is written to a temporary file beside its final name and renamed into
place once complete: a decode that fails (an unreadable image), is interrupted or runs out
of disk leaves no entry behind, only the error. Typical use, for a sampler that decodes
its own source into ``(N, C, H, W)``::

    key = files_key(paths, root, "84px", "rgb")
    images = cached_array("my-dataset", key, (len(paths), 3, 84, 84),
                          lambda out: decode_images(paths, out))
    batch = images[indices].astype(np.float32) / 255   # only these pages are read
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from metaplug.errors import DatasetError
from metaplug.tasks.datasets import cache_dir

FORMAT_VERSION = 1
"""Part of every key: bump it when the decoding changes, so old entries are not reused."""

COLORS = {"gray": 1, "rgb": 3}
"""Colour modes of :func:`decode_image` and their channel counts."""


def decoded_dir() -> Path:
    """Where cache entries live: ``$METAPLUG_CACHE_DIR/decoded``."""
    return cache_dir() / "decoded"


def files_key(paths: Sequence[Path], root: Path, *settings: object) -> str:
    """A digest of ``paths`` (their names relative to ``root``, sizes and modification
    times, in order) and ``settings``: the key of an array decoded from those files."""
    digest = hashlib.sha256(f"metaplug-cache-v{FORMAT_VERSION}".encode())
    for setting in settings:
        digest.update(f"\0{setting}".encode())
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
        digest.update(f"\0{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def cached_array(
    name: str, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None], folder: Path | None = None
) -> np.ndarray:
    """The uint8 array ``shape`` cached as ``<name>-<key>.npy`` in ``folder`` (default
    :func:`decoded_dir`), memory-mapped read-only.

    Without an entry, ``fill(out)`` writes every element of a fresh memory-mapped
    ``out``, which is then flushed and renamed into place; when ``fill`` raises, the
    partial file is removed and the error propagates. An entry that cannot be read or has
    the wrong shape is rebuilt. When the folder cannot be written (read-only, full), the
    array is filled in memory instead (still uint8): slower next time, never wrong.
    """
    folder = decoded_dir() if folder is None else folder
    path = folder / f"{name}-{key}.npy"
    existing = _open(path, shape)
    if existing is not None:
        return existing
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError:
        return _filled_in_memory(shape, fill)
    try:
        fill(out)
        out.flush()
        del out
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        return _filled_in_memory(shape, fill)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    opened = _open(path, shape)
    if opened is None:  # replaced by a concurrent writer with something unreadable
        return _filled_in_memory(shape, fill)
    return opened


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or array.shape != tuple(shape):
        return None
    return array


def _filled_in_memory(shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
    out = np.empty(shape, dtype=np.uint8)
    fill(out)
    out.flags.writeable = False
    return out


def decode_image(source: Path, size: tuple[int, int], color: str) -> np.ndarray:
    """The image file ``source`` (any format Pillow reads) as uint8 ``(C, height, width)``:
    converted to ``color`` (``"gray"``: 1 channel, ``"rgb"``: 3) and resized to ``size``
    (``(height, width)``, Lanczos). An unreadable or truncated file raises
    :class:`DatasetError` naming it."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    mode = "L" if color == "gray" else "RGB"
    try:
        with Image.open(source) as image:
            image.draft(mode, (width, height))  # JPEG: decode at a reduced scale when much larger
            pixels = image.convert(mode)
            if pixels.size != (width, height):
                pixels = pixels.resize((width, height), Image.Resampling.LANCZOS)
            array = np.asarray(pixels, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise DatasetError(f"cannot read image {source}: not an image format Pillow reads") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot read image {source}: {reason}") from exc
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def decode_images(paths: Sequence[Path], out: np.ndarray, workers: int | None = None, chunk: int = 64) -> None:
    """Decode ``paths`` into ``out`` (uint8 ``(len(paths), C, H, W)``; ``C`` 1 for gray, 3
    for RGB) with ``workers`` threads (default: the CPUs, at most 8), ``chunk`` files per
    task so that memory does not grow with the number of files. The first unreadable file
    (in order) stops the decode with a :class:`DatasetError` naming it."""
    if out.ndim != 4 or out.shape[1] not in (1, 3) or len(out) != len(paths):
        raise ValueError(f"out must be (len(paths), 1 or 3, H, W), got {out.shape} for {len(paths)} paths")
    color = "gray" if out.shape[1] == 1 else "rgb"
    size = (int(out.shape[2]), int(out.shape[3]))

    def decode(start: int) -> None:
        for index in range(start, min(start + chunk, len(paths))):
            out[index] = decode_image(paths[index], size, color)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for _ in pool.map(decode, range(0, len(paths), chunk)):
                pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


__all__ = ["COLORS", "cached_array", "decode_image", "decode_images", "decoded_dir", "files_key"]

"""Decoding a split of a standard dataset once into the memory-mapped cache.

A dataset module describes a split as a :class:`SplitPlan`: its classes, their image
counts and a stream of ``(class index, image)``. :func:`decoded_split` keys the split
by the source files' names, sizes and times, and on a miss runs the plan and fills a
uint8 ``(N, 3, size, size)`` entry of :mod:`metaplug.tasks.cache`, class after class,
decoding images on worker threads; a small JSON index beside the entry keeps the
classes and counts, so a cached split is opened without listing its archive.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaplug.errors import DatasetError
from metaplug.tasks.cache import cached_array, decoded_dir, files_key
from metaplug.tasks.layouts import DatasetInfo, Found

FORMAT_VERSION = 1
"""Part of every split's cache key: bump it when decoding changes."""

StreamImage = np.ndarray | Callable[[], np.ndarray]
"""A uint8 ``(3, size, size)`` image, or a function decoding it (see :func:`later`)."""
Stream = Callable[[], Iterable[tuple[int, StreamImage]]]
"""Yields ``(class index, image)`` for every image of a split, class by class or in any order;
the images of one class are stored in the order they come."""


@dataclass(frozen=True)
class SplitPlan:
    """One split as a dataset module reads it: ``classes`` (in the split's order),
    ``counts`` (images per class) and ``stream``, which decodes them."""

    classes: list[str]
    counts: list[int]
    stream: Stream


@dataclass(frozen=True)
class SplitImages:
    """A decoded split: ``images`` uint8 ``(N, 3, size, size)``, class after class."""

    classes: list[str]
    counts: list[int]
    images: np.ndarray


def pixels(data: bytes | np.ndarray, name: str, size: int) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) or an ``(H, W, 3)`` uint8 array as uint8
    ``(3, size, size)`` RGB, resized with Lanczos; an unreadable image raises one line naming ``name``."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(data, np.ndarray) and data.ndim == 3:
            image = Image.fromarray(np.ascontiguousarray(data, dtype=np.uint8))
        else:
            raw = data.tobytes() if isinstance(data, np.ndarray) else data
            image = Image.open(io.BytesIO(raw))
            image.draft("RGB", (size, size))
        with image:
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
            return np.moveaxis(np.asarray(rgb, dtype=np.uint8), -1, 0)
    except UnidentifiedImageError as exc:
        raise DatasetError(f"cannot read image {name}: not an image format Pillow reads") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot read image {name}: {reason}") from exc


def later(data: bytes | np.ndarray, name: str, size: int) -> Callable[[], np.ndarray]:
    """:func:`pixels` deferred, so that the cache is filled by decoding on worker threads
    while the stream goes on reading the archive."""
    return functools.partial(pixels, data, name, size)


def decoded_split(
    info: DatasetInfo,
    found: Found,
    split: str,
    size: int,
    plan: Callable[[], SplitPlan],
    subfolders: set[str] | None = None,
) -> SplitImages:
    """The split decoded into the cache, keyed by the found files' names, sizes and times
    (in a found folder, only under the ``subfolders`` named, when given); ``plan`` (which
    may list a whole archive) runs only when the cache lacks the split."""
    sources = _key_files(found, subfolders)
    key = files_key(sources, found.folder, info.name, split, size, found.layout.name, f"v{FORMAT_VERSION}")
    name = f"{info.name}-{split}-{size}px"
    index = decoded_dir() / f"{name}-{key}.json"
    known = _read_index(index)
    if known is not None and (decoded_dir() / f"{name}-{key}.npy").is_file():
        classes, counts = known
        try:
            return SplitImages(classes, counts, cached_array(name, key, (sum(counts), 3, size, size), _refuse_to_fill))
        except _Missing:
            pass  # unreadable or of another shape: decode again
    split_plan = plan()
    _check_counts(info, split, split_plan)
    offsets = np.concatenate([[0], np.cumsum(split_plan.counts)[:-1]]).astype(np.int64)

    def fill(out: np.ndarray) -> None:
        filled = np.zeros(len(split_plan.counts), dtype=np.int64)

        def put(label: int, image: np.ndarray) -> None:
            if filled[label] >= split_plan.counts[label]:
                raise DatasetError(f"{info.title}: more images of class {split_plan.classes[label]} than listed")
            out[offsets[label] + filled[label]] = image
            filled[label] += 1

        _decode_in_order(split_plan.stream(), put)
        short = [split_plan.classes[c] for c in np.flatnonzero(filled != np.asarray(split_plan.counts))]
        if short:
            raise DatasetError(f"{info.title} in {found.folder}: images of class {short[0]} are missing; replace them")

    images = cached_array(name, key, (sum(split_plan.counts), 3, size, size), fill)
    _write_index(index, split_plan.classes, split_plan.counts)
    return SplitImages(split_plan.classes, split_plan.counts, images)


def _decode_in_order(stream: Iterable[tuple[int, StreamImage]], put: Callable[[int, np.ndarray], None]) -> None:
    """``put`` each image of ``stream`` in order, decoding deferred ones on up to 8 threads
    (Pillow releases the GIL while it decodes) with a bounded number in flight."""
    workers = min(8, os.cpu_count() or 1)
    pending: deque[tuple[int, Future[np.ndarray] | np.ndarray]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for label, image in stream:
                pending.append((label, pool.submit(image) if callable(image) else image))
                while len(pending) > 4 * workers:
                    _put(put, *pending.popleft())
            while pending:
                _put(put, *pending.popleft())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _put(put: Callable[[int, np.ndarray], None], label: int, image: Future[np.ndarray] | np.ndarray) -> None:
    put(label, image.result() if isinstance(image, Future) else image)


def _key_files(found: Found, subfolders: set[str] | None = None) -> list[Path]:
    """The files a split is decoded from: each found file, and every file under each found
    folder (only in its ``subfolders``, when given: ImageNet's class folders of the split)."""
    files: list[Path] = []
    for path in sorted(found.paths.values()):
        if not path.is_dir():
            files.append(path)
            continue
        for folder, dirs, names in os.walk(path):
            if subfolders is not None and Path(folder) == path:
                dirs[:] = [d for d in dirs if d in subfolders]
            dirs.sort()
            files.extend(Path(folder) / name for name in sorted(names))
    return files


class _Missing(Exception):
    """The cache entry named by an index file is gone."""


def _refuse_to_fill(out: np.ndarray) -> None:
    raise _Missing


def _check_counts(info: DatasetInfo, split: str, plan: SplitPlan) -> None:
    empty = [c for c, n in zip(plan.classes, plan.counts, strict=True) if n == 0]
    if empty:
        raise DatasetError(f"{info.title}: no images of class {empty[0]} ({split} split) in the files found")


def _read_index(path: Path) -> tuple[list[str], list[int]] | None:
    try:
        data = json.loads(path.read_text())
        return [str(c) for c in data["classes"]], [int(n) for n in data["counts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_index(path: Path, classes: list[str], counts: list[int]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"classes": classes, "counts": counts}, handle)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # without an index the split is listed again next time: slower, never wrong

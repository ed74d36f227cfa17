"""What the standard few-shot benchmarks share: options, the sampler, the decoded split.

Each benchmark module (:mod:`~metaplug.tasks.mini_imagenet`, ...) describes its
dataset (:class:`~metaplug.tasks.layouts.DatasetInfo`) and how to read one split
of it: the classes, their image counts, and a stream of ``(class index, image)``.
This module verifies the files, decodes the stream once into a memory-mapped
uint8 cache (:mod:`metaplug.tasks.cache`), and draws N-way K-shot episodes from it
as float32 ``(3, size, size)`` images in ``[0, 1]``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metaplug.contract.interfaces import TaskSpec
from metaplug.contract.options import Options, option
from metaplug.errors import DatasetError
from metaplug.tasks.cache import cached_array, decoded_dir, files_key
from metaplug.tasks.episodes import EpisodeSampler, NWayKShot, split_rng
from metaplug.tasks.layouts import DatasetInfo, Found, locate, verify

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


class ImageClasses:
    """A :class:`~metaplug.tasks.episodes.ClassDataset` over a decoded split."""

    def __init__(self, images: np.ndarray, counts: list[int]) -> None:
        self.images = images
        self.counts = list(counts)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def class_size(self, label: int) -> int:
        return self.counts[label]

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        return self.images[self.offsets[label] + np.asarray(indices)].astype(np.float32) / 255.0


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


def in_order(classes: list[str], by_class: dict[str, list[Any]]) -> Iterator[tuple[int, Any]]:
    """``(class index, item)`` for the items of each class, class after class."""
    for label, name in enumerate(classes):
        for item in by_class.get(name, []):
            yield label, item


@dataclass(frozen=True)
class BenchmarkOptions(Options):
    """N-way K-shot episodes of a standard benchmark."""

    ways: int = option(5, minimum=1, help="classes per episode")
    shots: int = option(1, minimum=1, help="support examples per class")
    queries: int = option(15, minimum=1, help="query examples per class")
    root: str | None = option(None, help="folder with the dataset's files (default: DATA_DIR/<dataset folder>)")
    image_size: int = option(84, minimum=8, maximum=512, help="side of the resized images")


@dataclass(frozen=True)
class PickleBenchmarkOptions(BenchmarkOptions):
    """N-way K-shot episodes of a standard benchmark that may come as a pickle cache."""

    allow_pickle: bool = option(
        False, help="read a pickle cache (numpy arrays only) and convert it once into metaplug's cache"
    )


class BenchmarkSampler(EpisodeSampler):
    """N-way K-shot episodes of one split of a standard dataset:
    ``(T, ways*shots, 3, size, size)`` float32 in [0, 1]. Subclasses set ``name``,
    ``info``, ``Options`` and :meth:`plan`."""

    name: ClassVar[str]
    info: ClassVar[DatasetInfo]
    Options: ClassVar[type[BenchmarkOptions]] = BenchmarkOptions

    def __init__(self, split: str = "train", seed: int = 0, data_dir: str | None = None, **options: Any) -> None:
        o = self.Options.parse(options, owner=f"task sampler {self.name!r}")
        rng = split_rng(seed, split)
        self.options = o
        decoded = self.load(split, o, data_dir)
        self.classes = decoded.classes
        self.dataset = ImageClasses(decoded.images, decoded.counts)
        self.episodes = NWayKShot(self.dataset, o.ways, o.shots, o.queries, rng)
        self.split = split
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(3, o.image_size, o.image_size),
            output_size=o.ways,
            num_classes=self.dataset.num_classes,
            default_model="conv4",
        )

    @classmethod
    def load(cls, split: str, o: BenchmarkOptions, data_dir: str | None = None) -> SplitImages:
        """Locate and verify the files, then the split decoded (from the cache when it has it)."""
        folder = cls.info.root(o.root, data_dir)
        found = locate(cls.info, folder, split, allow_pickle=bool(getattr(o, "allow_pickle", False)))
        verify(cls.info, found)
        subfolders = cls.key_subfolders(found, split)
        plan = functools.partial(cls.plan, found, split, o.image_size)
        return decoded_split(cls.info, found, split, o.image_size, plan, subfolders)

    @classmethod
    def plan(cls, found: Found, split: str, size: int) -> SplitPlan:
        """How to read ``split`` from the files ``found``."""
        raise NotImplementedError

    @classmethod
    def key_subfolders(cls, found: Found, split: str) -> set[str] | None:
        """The only sub-folders of a found folder that ``split`` reads (``None``: all); the
        cache key then ignores the others (ImageNet's 1000 class folders, say)."""
        return None

"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018) from CIFAR-100's
binary archive.

Both read ``cifar-100-binary.tar.gz`` as published (MD5 checked): raw records of
one coarse-label byte, one fine-label byte and 3072 bytes of 32x32 RGB pixels, no
pickle. The 500 training and 100 test images of each class are pooled, as both
papers do (600 images per class).

- CIFAR-FS: 64 / 16 / 20 classes, Bertinetto et al.'s split (``splits/cifar-fs``).
- FC100: 60 / 20 / 20 classes, all the classes of 12 / 4 / 4 superclasses, so that
  training and test classes share no superclass (``splits/fc100``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaplug.contract.options import option
from metaplug.errors import DatasetError
from metaplug.tasks.benchmarks import BenchmarkOptions, BenchmarkSampler
from metaplug.tasks.layouts import DatasetInfo, Expected, Found, Layout, read_class_list
from metaplug.tasks.split_cache import SplitPlan, StreamImage, later

ARCHIVE = "cifar-100-binary.tar.gz"
ARCHIVE_MD5 = "03b5dce01913d631647c71ecec9e9cb8"
SOURCE = f"CIFAR-100 comes from https://www.cs.toronto.edu/~kriz/cifar.html (the binary version, {ARCHIVE})"
LICENCE = "no licence stated; free for research with a citation of Krizhevsky 2009"
LAYOUTS = (Layout("CIFAR-100 binary archive", (Expected((ARCHIVE,), ARCHIVE_MD5),)),)
RECORD_BYTES = 2 + 3 * 32 * 32

CIFAR_FS = DatasetInfo(
    name="cifar-fs",
    title="CIFAR-FS",
    folder="cifar-100",
    source=SOURCE,
    licence=LICENCE,
    layouts=LAYOUTS,
)
FC100 = DatasetInfo(
    name="fc100",
    title="FC100",
    folder="cifar-100",
    source=SOURCE,
    licence=LICENCE,
    layouts=LAYOUTS,
)


@dataclass(frozen=True)
class Cifar100:
    """The whole archive: ``records`` (``train.bin`` then ``test.bin``, uint8 rows of
    :data:`RECORD_BYTES`, kept as read), ``coarse`` and ``fine`` labels of every row."""

    records: tuple[np.ndarray, ...]
    coarse: np.ndarray
    fine: np.ndarray
    coarse_names: list[str]
    fine_names: list[str]

    def image(self, row: int) -> np.ndarray:
        """Row ``row`` (counting across the parts) as uint8 ``(3, 32, 32)``."""
        for part in self.records:
            if row < len(part):
                return part[row, 2:].reshape(3, 32, 32)
            row -= len(part)
        raise IndexError(row)


def read_archive(path: Path) -> Cifar100:
    """Read ``cifar-100-binary.tar.gz`` (``train.bin``, ``test.bin`` and the two label-name files)."""
    wanted = ("train.bin", "test.bin", "coarse_label_names.txt", "fine_label_names.txt")
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        parts[base] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable tar.gz archive ({exc}); replace it ({SOURCE})") from exc
    missing = [name for name in wanted if name not in parts]
    if missing:
        raise DatasetError(f"{path} lacks cifar-100-binary/{missing[0]}: not CIFAR-100's binary archive ({SOURCE})")
    records = []
    for name in ("train.bin", "test.bin"):
        if len(parts[name]) % RECORD_BYTES:
            raise DatasetError(f"{path}: {name} is not whole {RECORD_BYTES}-byte records; replace the archive")
        records.append(np.frombuffer(parts[name], dtype=np.uint8).reshape(-1, RECORD_BYTES))
    return Cifar100(
        records=tuple(records),
        coarse=np.concatenate([r[:, 0] for r in records]).astype(np.int64),
        fine=np.concatenate([r[:, 1] for r in records]).astype(np.int64),
        coarse_names=_names(parts["coarse_label_names.txt"]),
        fine_names=_names(parts["fine_label_names.txt"]),
    )


def _names(text: bytes) -> list[str]:
    return [line.strip() for line in text.decode("ascii", "replace").splitlines() if line.strip()]


def _plan(data: Cifar100, classes: list[str], path: Path, size: int) -> SplitPlan:
    index = {name: i for i, name in enumerate(data.fine_names)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DatasetError(f"{path}: fine_label_names.txt has no class {unknown[0]!r}; it is not CIFAR-100 ({SOURCE})")
    members = [np.flatnonzero(data.fine == index[c]) for c in classes]

    def stream() -> Iterator[tuple[int, StreamImage]]:
        for label, rows in enumerate(members):
            for row in rows:
                image = data.image(int(row))
                yield label, image if size == 32 else later(np.moveaxis(image, 0, -1), f"{path}[{row}]", size)

    return SplitPlan(list(classes), [len(m) for m in members], stream)


@dataclass(frozen=True)
class CifarOptions(BenchmarkOptions):
    """N-way K-shot episodes of CIFAR-100 classes."""

    image_size: int = option(32, minimum=8, maximum=512, help="side of the images (32: CIFAR's own size)")


class CifarFSSampler(BenchmarkSampler):
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes, 600 images each,
    from ``cifar-100-binary.tar.gz`` in ``DATA_DIR/cifar-100``."""

    name = "cifar-fs"
    info = CIFAR_FS
    Options = CifarOptions

    @classmethod
    def read_split(cls, found: Found, split: str, size: int) -> SplitPlan:
        path = found.path(ARCHIVE)
        return _plan(read_archive(path), read_class_list("cifar-fs", split), path, size)


class FC100Sampler(BenchmarkSampler):
    """FC100 (Oreshkin et al. 2018): the classes of 12 / 4 / 4 CIFAR-100 superclasses
    (60 / 20 / 20 classes, 600 images each), from ``cifar-100-binary.tar.gz`` in ``DATA_DIR/cifar-100``."""

    name = "fc100"
    info = FC100
    Options = CifarOptions

    @classmethod
    def read_split(cls, found: Found, split: str, size: int) -> SplitPlan:
        path = found.path(ARCHIVE)
        data = read_archive(path)
        superclasses = read_class_list("fc100", split)
        unknown = [s for s in superclasses if s not in data.coarse_names]
        if unknown:
            raise DatasetError(f"{path}: coarse_label_names.txt has no superclass {unknown[0]!r} ({SOURCE})")
        wanted = {data.coarse_names.index(s) for s in superclasses}
        fine = sorted({int(f) for f, c in zip(data.fine, data.coarse, strict=True) if c in wanted})
        classes = sorted((data.coarse_names[int(data.coarse[data.fine == f][0])], data.fine_names[f]) for f in fine)
        return _plan(data, [name for _, name in classes], path, size)

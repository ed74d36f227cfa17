"""tiered-ImageNet (Ren et al. 2018): 608 ImageNet classes in 34 categories.

The classes are grouped by their ancestor category in the ImageNet hierarchy:
20 categories (351 classes) for training, 6 (97) for validation, 8 (160) for
testing (``splits/tiered-imagenet``, Ren et al.'s split files: ``class,category``
rows). Every ILSVRC-2012 training image of a class is used, resized to 84x84.
Two layouts are read:

- ImageNet's own training archive ``ILSVRC2012_img_train.tar`` (MD5 checked; a
  tar of one tar per class), or that archive extracted: ``ILSVRC2012_img_train/``
  or ``train/`` holding ``<wnid>/<images>``.
- Ren et al.'s pickles ``<split>_images_png.pkl`` (PNG-encoded images) and
  ``<split>_labels.pkl``, read only with ``allow_pickle = true`` and converted once
  into metaplug's cache.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from metaplug.errors import DatasetError
from metaplug.tasks.benchmarks import BenchmarkSampler, PickleBenchmarkOptions, SplitPlan, StreamImage, in_order, later
from metaplug.tasks.layouts import SPLIT_NAMES, DatasetInfo, Expected, Found, Layout, read_class_list
from metaplug.tasks.safe_pickle import load_arrays

ARCHIVE = "ILSVRC2012_img_train.tar"
ARCHIVE_MD5 = "1d675b47d978889d74fa0da5fadfb00e"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

IMAGENET = Layout(
    "ImageNet ILSVRC-2012 training images",
    (Expected((ARCHIVE, "ILSVRC2012_img_train/", "train/"), ARCHIVE_MD5),),
)
PICKLES = Layout(
    "Ren et al.'s pickles",
    tuple(Expected((f"{s}_{part}.pkl",), split=s) for s in SPLIT_NAMES for part in ("images_png", "labels")),
    needs_pickle=True,
)
TIERED_IMAGENET = DatasetInfo(
    name="tiered-imagenet",
    title="tiered-ImageNet",
    folder="tiered-imagenet",
    source=(
        f"tiered-ImageNet is built from ImageNet's {ARCHIVE} (https://image-net.org, ILSVRC-2012, "
        "MD5 1d675b47d978889d74fa0da5fadfb00e); Ren et al.'s pickles from https://github.com/renmengye/few-shot-ssl-public"
    ),
    licence="ImageNet terms of access: non-commercial research and education only",
    layouts=(IMAGENET, PICKLES),
)


class TieredImageNetSampler(BenchmarkSampler):
    """tiered-ImageNet, Ren et al.'s 351 / 97 / 160 classes (20 / 6 / 8 categories), 84x84,
    from ``ILSVRC2012_img_train.tar`` (or its extracted folder) in ``DATA_DIR/tiered-imagenet``,
    or from Ren et al.'s pickles with ``allow_pickle = true``."""

    name = "tiered-imagenet"
    info = TIERED_IMAGENET
    Options = PickleBenchmarkOptions

    @classmethod
    def plan(cls, found: Found, split: str, size: int) -> SplitPlan:
        classes = read_class_list("tiered-imagenet", split)
        if found.layout is PICKLES:
            images, labels = found.path(f"{split}_images_png.pkl"), found.path(f"{split}_labels.pkl")
            return _from_pickles(images, labels, split, classes, size)
        source = found.path(ARCHIVE)
        if source.is_dir():
            return _from_folder(source, classes, size)
        return _from_archive(source, classes, size)


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def _missing(classes: list[str], counts: dict[str, int], where: Path) -> None:
    absent = [c for c in classes if not counts.get(c)]
    if absent:
        raise DatasetError(
            f"{where} has no images of class {absent[0]}; it is not the full ILSVRC-2012 training set "
            f"({TIERED_IMAGENET.source})"
        )


def _from_folder(folder: Path, classes: list[str], size: int) -> SplitPlan:
    by_class = {
        c: sorted(p for p in (folder / c).iterdir() if _is_image(p.name)) for c in classes if (folder / c).is_dir()
    }
    _missing(classes, {c: len(v) for c, v in by_class.items()}, folder)

    def stream() -> Iterator[tuple[int, StreamImage]]:
        for label, path in in_order(classes, by_class):
            yield label, later(path.read_bytes(), str(path), size)

    return SplitPlan(classes, [len(by_class[c]) for c in classes], stream)


def _class_tars(path: Path, wanted: set[str]) -> Iterator[tuple[str, tarfile.TarFile]]:
    """``(wnid, inner tar)`` for each ``<wnid>.tar`` of the outer archive that is ``wanted``."""
    try:
        with tarfile.open(path, "r:") as outer:
            for member in outer:
                wnid = member.name.rsplit("/", 1)[-1].removesuffix(".tar")
                if member.isfile() and member.name.endswith(".tar") and wnid in wanted:
                    handle: IO[bytes] | None = outer.extractfile(member)
                    assert handle is not None
                    with tarfile.open(fileobj=handle, mode="r:") as inner:
                        yield wnid, inner
    except (tarfile.TarError, OSError, EOFError) as exc:
        message = f"{path} is not a readable tar archive ({exc}); replace it ({TIERED_IMAGENET.source})"
        raise DatasetError(message) from exc


def _from_archive(path: Path, classes: list[str], size: int) -> SplitPlan:
    wanted = set(classes)
    counts = {wnid: sum(m.isfile() and _is_image(m.name) for m in inner) for wnid, inner in _class_tars(path, wanted)}
    _missing(classes, counts, path)
    label_of = {c: i for i, c in enumerate(classes)}

    def stream() -> Iterator[tuple[int, StreamImage]]:
        for wnid, inner in _class_tars(path, wanted):
            for member in inner:
                if member.isfile() and _is_image(member.name):
                    handle = inner.extractfile(member)
                    assert handle is not None
                    yield label_of[wnid], later(handle.read(), f"{path}:{wnid}.tar:{member.name}", size)

    return SplitPlan(classes, [counts[c] for c in classes], stream)


def _from_pickles(images_path: Path, labels_path: Path, split: str, classes: list[str], size: int) -> SplitPlan:
    labels: Any = load_arrays(labels_path)
    if not isinstance(labels, dict) or not {"label_specific", "label_specific_str"} <= set(labels):
        raise DatasetError(
            f"{labels_path} is not Ren et al.'s labels (a dict with label_specific and label_specific_str); "
            f"replace it ({TIERED_IMAGENET.source})"
        )
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in labels["label_specific_str"]]
    specific = np.asarray(labels["label_specific"]).reshape(-1).astype(np.int64)
    if specific.size and not (specific.min() >= 0 and specific.max() < len(names)):
        raise DatasetError(f"{labels_path}: label_specific must index label_specific_str")
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DatasetError(
            f"{labels_path} names class {unknown[0]}, which is not in Ren et al.'s {split} split; "
            f"replace it ({TIERED_IMAGENET.source})"
        )
    images: Any = load_arrays(images_path)
    if not isinstance(images, (list, tuple, np.ndarray)) or len(images) != len(specific):
        raise DatasetError(f"{images_path} must hold one PNG-encoded image per label of {labels_path.name}")
    label_of = {c: i for i, c in enumerate(classes)}
    rows = np.asarray([label_of[names[k]] for k in specific], dtype=np.int64)
    counts = np.bincount(rows, minlength=len(classes)).tolist()
    _missing(classes, dict(zip(classes, counts, strict=True)), labels_path)
    by_class = {c: np.flatnonzero(rows == i).tolist() for i, c in enumerate(classes)}

    def stream() -> Iterator[tuple[int, StreamImage]]:
        for label, index in in_order(classes, by_class):
            yield label, later(np.asarray(images[index], dtype=np.uint8), f"{images_path}[{index}]", size)

    return SplitPlan(classes, counts, stream)

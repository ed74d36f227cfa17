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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.errors import DatasetError
from metaplug.tasks import imagenet
from metaplug.tasks.benchmarks import BenchmarkSampler, PickleBenchmarkOptions, in_order
from metaplug.tasks.layouts import SPLIT_NAMES, DatasetInfo, Expected, Found, Layout, read_class_list
from metaplug.tasks.safe_pickle import load_arrays
from metaplug.tasks.split_cache import SplitPlan, StreamImage, later

IMAGENET = Layout("ImageNet ILSVRC-2012 training images", (imagenet.TRAINING_IMAGES,))
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
        f"tiered-ImageNet is built from ImageNet's {imagenet.ARCHIVE} (https://image-net.org, ILSVRC-2012, "
        f"MD5 {imagenet.ARCHIVE_MD5}); Ren et al.'s pickles from https://github.com/renmengye/few-shot-ssl-public"
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
    def key_subfolders(cls, found: Found, split: str) -> set[str] | None:
        return set(read_class_list("tiered-imagenet", split)) if found.layout is IMAGENET else None

    @classmethod
    def read_split(cls, found: Found, split: str, size: int) -> SplitPlan:
        classes = read_class_list("tiered-imagenet", split)
        if found.layout is PICKLES:
            images, labels = found.path(f"{split}_images_png.pkl"), found.path(f"{split}_labels.pkl")
            return _from_pickles(images, labels, split, classes, size)
        return _from_imagenet(found.path(imagenet.ARCHIVE), classes, size)


def _from_imagenet(source: Path, classes: list[str], size: int) -> SplitPlan:
    listed = imagenet.list_classes(source, set(classes))
    imagenet.check_classes(classes, listed, source, "tiered-ImageNet")
    label_of = {c: i for i, c in enumerate(classes)}

    def stream() -> Iterator[tuple[int, StreamImage]]:
        for wnid, name, data in imagenet.read_images(source, dict.fromkeys(classes)):
            yield label_of[wnid], later(data, f"{source}:{wnid}/{name}", size)

    return SplitPlan(classes, [len(listed[c]) for c in classes], stream)


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
    absent = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if absent:
        raise DatasetError(f"{labels_path} has no images of class {absent[0]}; replace it ({TIERED_IMAGENET.source})")
    by_class = {c: np.flatnonzero(rows == i).tolist() for i, c in enumerate(classes)}

    def stream() -> Iterator[tuple[int, StreamImage]]:
        for label, index in in_order(classes, by_class):
            yield label, later(np.asarray(images[index], dtype=np.uint8), f"{images_path}[{index}]", size)

    return SplitPlan(classes, counts, stream)

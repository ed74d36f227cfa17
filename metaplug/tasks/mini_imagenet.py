"""mini-ImageNet (Vinyals et al. 2016) with Ravi & Larochelle's 2017 class split.

100 ImageNet classes of 600 images, 64 for training, 16 for validation and 20 for
testing (``splits/mini-imagenet``, the classes of Ravi & Larochelle's
``train.csv``, ``val.csv`` and ``test.csv``). Three layouts are read:

- Ravi & Larochelle's release: ``images.zip`` (or the extracted ``images/``) with
  the 60 000 images named as in the CSV files, plus the three CSV files
  (``filename,label`` rows). Each split needs only its own CSV file. A CSV file
  whose classes are not the published split is refused.
- ImageNet's training images (``ILSVRC2012_img_train.tar``, MD5 checked, or its
  extracted folder) with the CSV files: row ``<wnid><k>.jpg`` is the k-th image of
  the class in number order, as mini-ImageNet's generator
  (github.com/yaoyao-liu/mini-imagenet-tools) picks it; no Google Drive needed.
- A pickle cache ``mini-imagenet-cache-<split>.pkl`` (a dict of ``image_data``,
  uint8 ``(N, 84, 84, 3)``, and ``class_dict``, class -> image indices), read only
  with ``allow_pickle = true`` and converted once into metaplug's cache.

No checksum of these files was ever published: add a ``SHA256SUMS`` file beside
them (``sha256sum images.zip *.csv > SHA256SUMS``) to have them checked.
"""

from __future__ import annotations

import csv
import zipfile
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

RAVI = Layout(
    "Ravi & Larochelle's release",
    (Expected(("images.zip", "images/")), *(Expected((f"{s}.csv",), split=s) for s in SPLIT_NAMES)),
)
IMAGENET = Layout(
    "ImageNet's training images with Ravi & Larochelle's CSV files",
    (imagenet.TRAINING_IMAGES, *(Expected((f"{s}.csv",), split=s) for s in SPLIT_NAMES)),
)
PICKLES = Layout(
    "pickle cache",
    tuple(Expected((f"mini-imagenet-cache-{s}.pkl",), split=s) for s in SPLIT_NAMES),
    needs_pickle=True,
)
MINI_IMAGENET = DatasetInfo(
    name="mini-imagenet",
    title="mini-ImageNet",
    folder="mini-imagenet",
    source=(
        "mini-ImageNet's split files train.csv, val.csv and test.csv come from "
        "https://github.com/twitter/meta-learning-lstm (data/miniImagenet), its images from ImageNet "
        "(https://image-net.org, ILSVRC-2012 training set) as distributed by the authors in images.zip"
    ),
    licence="ImageNet terms of access: non-commercial research and education only",
    layouts=(RAVI, IMAGENET, PICKLES),
)


def read_csv(path: Path, classes: list[str]) -> dict[str, list[str]]:
    """``{class: [file names]}`` from a Ravi & Larochelle CSV file whose classes must be ``classes``."""
    by_class: dict[str, list[str]] = {}
    try:
        with open(path, newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if number == 1 and row[:2] == ["filename", "label"]:
                    continue
                if len(row) != 2:
                    raise DatasetError(f"{path}, line {number}: expected 'filename,label', got {','.join(row)!r}")
                by_class.setdefault(row[1].strip(), []).append(row[0].strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    _check_split(path, set(by_class), classes)
    return by_class


def _check_split(path: Path, found: set[str], classes: list[str]) -> None:
    unknown = sorted(found - set(classes))
    if unknown:
        raise DatasetError(
            f"{path} lists class {unknown[0]}, which is not in Ravi & Larochelle's split; "
            f"use the published file ({MINI_IMAGENET.source})"
        )
    missing = [c for c in classes if c not in found]
    if missing:
        raise DatasetError(f"{path} lacks class {missing[0]} of Ravi & Larochelle's split ({MINI_IMAGENET.source})")


class MiniImageNetSampler(BenchmarkSampler):
    """mini-ImageNet, Ravi & Larochelle's 64 / 16 / 20 classes of 600 images, 84x84, from
    ``images.zip`` (or ``images/``) or ``ILSVRC2012_img_train.tar`` (or its extracted folder),
    and ``train.csv``, ``val.csv``, ``test.csv``, in ``DATA_DIR/mini-imagenet``; or from a pickle
    cache with ``allow_pickle = true``."""

    name = "mini-imagenet"
    info = MINI_IMAGENET
    Options = PickleBenchmarkOptions

    @classmethod
    def key_subfolders(cls, found: Found, split: str) -> set[str] | None:
        return set(read_class_list("mini-imagenet", split)) if found.layout is IMAGENET else None

    @classmethod
    def read_split(cls, found: Found, split: str, size: int) -> SplitPlan:
        classes = read_class_list("mini-imagenet", split)
        if found.layout is PICKLES:
            return _from_pickle(found.path(f"mini-imagenet-cache-{split}.pkl"), classes, size)
        if found.layout is IMAGENET:
            return _from_imagenet(found.path(imagenet.ARCHIVE), found.path(f"{split}.csv"), classes, size)
        by_class = read_csv(found.path(f"{split}.csv"), classes)
        images = found.path("images.zip")
        counts = [len(by_class[c]) for c in classes]
        if images.is_dir():

            def from_folder() -> Iterator[tuple[int, StreamImage]]:
                for label, name in in_order(classes, by_class):
                    path = images / name
                    try:
                        data = path.read_bytes()
                    except OSError as exc:
                        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from exc
                    yield label, later(data, str(path), size)

            return SplitPlan(classes, counts, from_folder)

        def from_zip() -> Iterator[tuple[int, StreamImage]]:
            try:
                with zipfile.ZipFile(images) as archive:
                    members = {n.rsplit("/", 1)[-1]: n for n in archive.namelist() if not n.endswith("/")}
                    for label, name in in_order(classes, by_class):
                        if name not in members:
                            raise DatasetError(f"{images} has no image {name} (listed in {split}.csv); replace it")
                        yield label, later(archive.read(members[name]), f"{images}:{members[name]}", size)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"{images} is not a readable zip archive ({exc}); replace it") from exc

        return SplitPlan(classes, counts, from_zip)


def _from_imagenet(source: Path, csv_path: Path, classes: list[str], size: int) -> SplitPlan:
    """The images a CSV file names, taken from ImageNet's training images as mini-ImageNet's
    generator takes them: row ``<wnid><k>.jpg`` is the k-th image of class ``wnid`` in number order."""
    by_class = read_csv(csv_path, classes)
    listed = imagenet.list_classes(source, set(classes))
    imagenet.check_classes(classes, listed, source, "mini-ImageNet")
    chosen: dict[str, list[str]] = {}
    for wnid in classes:
        chosen[wnid] = []
        for row in by_class[wnid]:
            stem = row.rsplit(".", 1)[0]
            number = stem[len(wnid) :]
            if not stem.startswith(wnid) or not number.isdigit():
                raise DatasetError(f"{csv_path}: {row!r} is not named <class><number>.jpg as in Ravi & Larochelle's")
            if not 1 <= int(number) <= len(listed[wnid]):
                raise DatasetError(
                    f"{csv_path}: {row} is image {int(number)} of class {wnid}, but {source} has "
                    f"{len(listed[wnid])}; it is not the ILSVRC-2012 training set ({imagenet.SOURCE})"
                )
            chosen[wnid].append(listed[wnid][int(number) - 1])
    label_of = {c: i for i, c in enumerate(classes)}

    def stream() -> Iterator[tuple[int, StreamImage]]:
        pending: dict[str, dict[str, bytes]] = {}
        for wnid, name, data in imagenet.read_images(source, {w: set(chosen[w]) for w in classes}):
            got = pending.setdefault(wnid, {})
            got[name] = data
            if len(got) == len(set(chosen[wnid])):  # the class is complete: in the CSV's order
                for picked in chosen[wnid]:
                    yield label_of[wnid], later(got[picked], f"{source}:{wnid}/{picked}", size)
                del pending[wnid]

    return SplitPlan(classes, [len(chosen[c]) for c in classes], stream)


def _from_pickle(path: Path, classes: list[str], size: int) -> SplitPlan:
    data: Any = load_arrays(path)
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        raise DatasetError(
            f"{path} is not a mini-ImageNet cache (a dict of image_data and class_dict); replace it "
            f"or use Ravi & Larochelle's files ({MINI_IMAGENET.source})"
        )
    images, class_dict = data["image_data"], data["class_dict"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{path}: image_data must be uint8 (N, height, width, 3)")
    if not isinstance(class_dict, dict):
        raise DatasetError(f"{path}: class_dict must map each class to its image indices")
    _check_split(path, {str(c) for c in class_dict}, classes)
    by_class = {str(c): [int(i) for i in np.asarray(v).reshape(-1)] for c, v in class_dict.items()}
    bad = [i for v in by_class.values() for i in v if not 0 <= i < len(images)]
    if bad:
        raise DatasetError(f"{path}: class_dict names image {bad[0]}, but image_data holds {len(images)} images")

    def from_arrays() -> Iterator[tuple[int, StreamImage]]:
        for label, index in in_order(classes, by_class):
            image = images[index]
            if image.shape[:2] == (size, size):
                yield label, np.moveaxis(image, -1, 0)
            else:
                yield label, later(image, f"{path}[{index}]", size)

    return SplitPlan(classes, [len(by_class[c]) for c in classes], from_arrays)


__all__ = ["MINI_IMAGENET", "MiniImageNetSampler"]

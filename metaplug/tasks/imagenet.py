"""ImageNet's ILSVRC-2012 training images, read as published or extracted.

``ILSVRC2012_img_train.tar`` (138 GB, MD5 checked) is a tar of one ``<wnid>.tar`` per
class, each holding that class's ``<wnid>_<number>.JPEG`` images; extracted, it is a
folder (``ILSVRC2012_img_train/`` or ``train/``) of ``<wnid>/`` folders. mini- and
tiered-ImageNet take their classes from it. A class's images are listed in the order
of their numbers, as mini-ImageNet's generator (github.com/yaoyao-liu/mini-imagenet-tools)
numbers them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from metaplug.errors import DatasetError
from metaplug.tasks.layouts import Expected

ARCHIVE = "ILSVRC2012_img_train.tar"
ARCHIVE_MD5 = "1d675b47d978889d74fa0da5fadfb00e"
SOURCE = f"ImageNet's {ARCHIVE} comes from https://image-net.org (ILSVRC-2012 training images, MD5 {ARCHIVE_MD5})"
TRAINING_IMAGES = Expected((ARCHIVE, "ILSVRC2012_img_train/", "train/"), ARCHIVE_MD5)
"""The training images as a layout file: the archive, or its extracted folder."""
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def image_number(name: str) -> tuple[int, str]:
    """Sort key of ``<wnid>_<number>.JPEG``: the number (names without one sort after, by name)."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    number = stem.rsplit("_", 1)[-1]
    return (int(number), stem) if number.isdigit() else (1 << 62, stem)


def list_classes(source: Path, wnids: set[str]) -> dict[str, list[str]]:
    """The image names of each class of ``wnids`` found in ``source``, sorted by number."""
    found: dict[str, list[str]] = {}
    if source.is_dir():
        for wnid in wnids:
            if (source / wnid).is_dir():
                found[wnid] = [p.name for p in (source / wnid).iterdir() if is_image(p.name)]
    else:
        for wnid, inner in _class_tars(source, wnids):
            found[wnid] = [m.name.rsplit("/", 1)[-1] for m in inner if m.isfile() and is_image(m.name)]
    return {wnid: sorted(names, key=image_number) for wnid, names in found.items() if names}


def read_images(source: Path, wanted: Mapping[str, set[str] | None]) -> Iterator[tuple[str, str, bytes]]:
    """``(wnid, image name, encoded bytes)`` of the ``wanted`` images of each class (``None``:
    all of them), class by class; in number order from a folder, in archive order from the tar."""
    if source.is_dir():
        for wnid in sorted(wanted):
            names = wanted[wnid]
            listed = sorted((p.name for p in (source / wnid).iterdir() if is_image(p.name)), key=image_number)
            for name in listed:
                if names is None or name in names:
                    path = source / wnid / name
                    try:
                        yield wnid, name, path.read_bytes()
                    except OSError as exc:
                        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from exc
        return
    for wnid, inner in _class_tars(source, set(wanted)):
        names = wanted[wnid]
        for member in inner:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and is_image(name) and (names is None or name in names):
                handle = inner.extractfile(member)
                assert handle is not None
                yield wnid, name, handle.read()


def check_classes(classes: list[str], listed: Mapping[str, list[str]], source: Path, dataset: str) -> None:
    """One line naming the first class of ``classes`` without images in ``source``."""
    absent = [c for c in classes if not listed.get(c)]
    if absent:
        raise DatasetError(
            f"{source} has no images of class {absent[0]} ({dataset}); it is not the full ILSVRC-2012 "
            f"training set ({SOURCE})"
        )


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
        raise DatasetError(f"{path} is not a readable tar archive ({exc}); replace it ({SOURCE})") from exc

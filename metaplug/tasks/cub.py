"""CUB-200-2011 (Wah et al. 2011) with the few-shot class split of Chen et al. 2019.

Reads ``CUB_200_2011.tgz`` as published (MD5 checked) or its extracted
``CUB_200_2011/`` folder. Classes are the 200 folders of ``CUB_200_2011/images``;
Chen et al.'s split (``splits/cub``, from their ``write_CUB_filelist.py``) takes
the folders in sorted order, every second one for training (100), and of the rest
alternately validation (50) and test (50). Every image of a class is used, resized
to ``image_size`` (84 by default, as for conv4 in Chen et al.).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from metaplug.errors import DatasetError
from metaplug.tasks.benchmarks import BenchmarkSampler, in_order
from metaplug.tasks.layouts import DatasetInfo, Expected, Found, Layout, read_class_list
from metaplug.tasks.split_cache import SplitPlan, StreamImage, later

ARCHIVE = "CUB_200_2011.tgz"
ARCHIVE_MD5 = "97eceeb196236b17998738112f37df78"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

CUB = DatasetInfo(
    name="cub",
    title="CUB-200-2011",
    folder="cub-200-2011",
    source=f"CUB-200-2011 comes from https://data.caltech.edu/records/65de6-vp158 ({ARCHIVE})",
    licence="no licence file; images from Flickr, for non-commercial research (see the Caltech page)",
    layouts=(Layout("CUB-200-2011 as published", (Expected((ARCHIVE, "CUB_200_2011/"), ARCHIVE_MD5),)),),
)


def _class_and_name(path: str) -> tuple[str, str] | None:
    """``(class folder, file name)`` of an image member ``.../images/<class>/<file>``."""
    parts = path.split("/")
    image = parts[-1].lower().endswith(IMAGE_SUFFIXES) and not parts[-1].startswith(".")
    if len(parts) >= 3 and parts[-3] == "images" and image:
        return parts[-2], parts[-1]
    return None


class CUBSampler(BenchmarkSampler):
    """CUB-200-2011 birds, Chen et al. 2019's 100 / 50 / 50 classes, from
    ``CUB_200_2011.tgz`` (or ``CUB_200_2011/``) in ``DATA_DIR/cub-200-2011``."""

    name = "cub"
    info = CUB

    @classmethod
    def read_split(cls, found: Found, split: str, size: int) -> SplitPlan:
        source = found.path(ARCHIVE)
        classes = read_class_list("cub", split)
        wanted = set(classes)
        if source.is_dir():
            by_class = {
                c: sorted(p for p in (source / "images" / c).iterdir() if _class_and_name(f"images/{c}/{p.name}"))
                for c in classes
                if (source / "images" / c).is_dir()
            }
            _check_classes(classes, by_class, source / "images")

            def from_folder() -> Iterator[tuple[int, StreamImage]]:
                for label, path in in_order(classes, by_class):
                    yield label, later(path.read_bytes(), str(path), size)

            return SplitPlan(classes, [len(by_class[c]) for c in classes], from_folder)
        members: dict[str, list[str]] = {}
        for name in _tar_names(source):
            parsed = _class_and_name(name)
            if parsed and parsed[0] in wanted:
                members.setdefault(parsed[0], []).append(name)
        _check_classes(classes, members, source)
        label_of = {c: i for i, c in enumerate(classes)}

        def from_archive() -> Iterator[tuple[int, StreamImage]]:
            with tarfile.open(source, "r:*") as archive:
                for member in archive:
                    parsed = _class_and_name(member.name)
                    if member.isfile() and parsed and parsed[0] in wanted:
                        handle = archive.extractfile(member)
                        assert handle is not None
                        yield label_of[parsed[0]], later(handle.read(), f"{source}:{member.name}", size)

        return SplitPlan(classes, [len(members[c]) for c in classes], from_archive)


def _tar_names(path: Path) -> list[str]:
    try:
        with tarfile.open(path, "r:*") as archive:
            return [m.name for m in archive if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable tar archive ({exc}); replace it ({CUB.source})") from exc


def _check_classes(classes: list[str], found: Mapping[str, Sequence[object]], where: Path) -> None:
    missing = [c for c in classes if not found.get(c)]
    if missing:
        raise DatasetError(
            f"{where} has no images of class {missing[0]} (expected CUB_200_2011/images/{missing[0]}/); "
            f"it is not the full CUB-200-2011 ({CUB.source})"
        )

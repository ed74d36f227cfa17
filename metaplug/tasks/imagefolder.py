"""N-way K-shot episodes over the user's own folder of images, one folder per class.

Layouts (the first that applies):

``ROOT/train/<class>/...``, ``ROOT/val/<class>/...``, ``ROOT/test/<class>/...``
    the splits as folders.
``ROOT/<class>/...`` with ``split_files = "DIR"``
    ``DIR/train.csv`` (or ``.txt``), ``DIR/val...`` and ``DIR/test...`` list each split's
    classes (see :func:`metaplug.tasks.class_splits.read_split_file`).
``ROOT/<class>/...``
    the classes (sorted) shuffled with ``split_seed`` and cut by ``split_ratio``.

Every file Pillow reads (PNG, JPEG, BMP, GIF, TIFF, WebP...; hidden files and other
suffixes are skipped) is converted to gray or RGB, resized to ``image_size`` squared
(Lanczos, aspect ratio not kept) and decoded once into a memory-mapped uint8 cache
(:mod:`metaplug.tasks.cache`), one entry per split, keyed by the files' names, sizes and
modification times. Episodes read only the images they use from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract.interfaces import SPLITS, TaskSpec
from metaplug.contract.options import option
from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks.augment import AugmentOptions
from metaplug.tasks.cache import COLORS, cached_array, decode_image, decode_images, files_key
from metaplug.tasks.class_splits import ratio_split, read_split_file, split_file
from metaplug.tasks.episodes import ClassDataset, EpisodeSampler, NWayKShot, split_rng

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def image_suffixes() -> frozenset[str]:
    """File suffixes (lower case) of the formats the installed Pillow reads."""
    from PIL import Image

    return frozenset(s for s, f in Image.registered_extensions().items() if f in Image.OPEN)


@dataclass(frozen=True)
class ClassFolder:
    """One class: its name and image files (sorted)."""

    name: str
    folder: Path
    files: tuple[Path, ...]


def list_class(folder: Path, suffixes: frozenset[str]) -> ClassFolder:
    """The images of a class folder; an empty one (no image file) is a one-line error."""
    try:
        files = sorted(
            p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in suffixes and p.is_file()
        )
    except OSError as exc:
        raise DatasetError(f"cannot read class folder {folder}: {exc.strerror or exc}") from exc
    if not files:
        raise DatasetError(f"class folder {folder} holds no images (PNG, JPEG or another format Pillow reads)")
    return ClassFolder(folder.name, folder, tuple(files))


def class_folders(folder: Path) -> list[Path]:
    """The subfolders of ``folder`` (sorted; hidden ones skipped); none is an error."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist; expected {folder}/<class>/<images>")
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(f"{folder} has no class folders; expected {folder}/<class>/<images>")
    return found


def has_split_folders(root: Path) -> bool:
    """Whether ``root`` is laid out as ``train/``, ``val/``, ``test/`` (``train`` and one more)."""
    return (root / "train").is_dir() and any((root / s).is_dir() for s in ("val", "test"))


def split_classes(
    root: Path, split_files: Path | None, ratios: tuple[float, float, float], seed: int
) -> dict[str, list[Path]]:
    """The class folders of each split, for the layout ``root`` and the options use."""
    if has_split_folders(root):
        if split_files is not None:
            raise ConfigError(
                f"{root} is split into train/, val/ and test/ folders; "
                f"remove split_files ({split_files}) or the folders"
            )
        return {s: class_folders(root / s) if (root / s).is_dir() else _missing_split(root, s) for s in SPLITS}
    folders = {p.name: p for p in class_folders(root)}
    if split_files is not None:
        chosen = {}
        for s in SPLITS:
            path = split_file(split_files, s)
            names = read_split_file(path)
            unknown = [n for n in names if n not in folders]
            if unknown:
                raise DatasetError(
                    f"split file {path} names class {unknown[0]!r}, which is not a folder in {root}"
                    + (f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else "")
                )
            chosen[s] = [folders[n] for n in names]
        return chosen
    return {s: [folders[n] for n in names] for s, names in ratio_split(list(folders), ratios, seed).items()}


def _missing_split(root: Path, split: str) -> list[Path]:
    raise DatasetError(f"{root / split} not found; a folder split needs {root}/train, {root}/val and {root}/test")


def detect_color(classes: list[ClassFolder]) -> str:
    """``"gray"`` when the first image of every class is grayscale, else ``"rgb"``."""
    from PIL import Image

    for c in classes:
        try:
            with Image.open(c.files[0]) as image:
                if image.mode not in GRAY_MODES:
                    return "rgb"
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetError(
                f"cannot read image {c.files[0]}: {str(exc).splitlines()[0] if str(exc) else exc}"
            ) from exc
    return "gray"


class FolderImages:
    """A :class:`~metaplug.tasks.episodes.ClassDataset` over a split's decoded images: a
    uint8 ``(N, C, size, size)`` array (memory-mapped) and each class's first row."""

    def __init__(self, images: np.ndarray, sizes: list[int]) -> None:
        self.images = images
        self.sizes = sizes
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.sizes)

    def class_size(self, label: int) -> int:
        return self.sizes[label]

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        rows = self.starts[label] + np.asarray(indices, dtype=np.int64)
        return np.multiply(self.images[rows], np.float32(1 / 255), dtype=np.float32)


@dataclass(frozen=True)
class ImageFolderOptions(AugmentOptions):
    """N-way K-shot episodes over ``root/<class>/<images>`` (see the module docstring)."""

    root: str | None = option(None, path=True, help="folder of class folders (or of train/, val/ and test/ folders)")
    ways: int = option(5, minimum=2, help="classes per episode")
    shots: int = option(1, minimum=1, help="support examples per class")
    queries: int = option(15, minimum=1, help="query examples per class")
    image_size: int = option(84, minimum=4, maximum=1024, help="side of the resized square images")
    color: str = option("auto", choices=("auto", "rgb", "gray"), help="auto: gray if every class's first image is")
    split_files: str | None = option(
        None, path=True, help="folder with train/val/test .csv or .txt files listing classes"
    )
    split_ratio: tuple[float, float, float] = option(
        (0.64, 0.16, 0.2), minimum=0, help="train/val/test shares of the classes, without split folders or files"
    )
    split_seed: int = option(0, minimum=0, help="seed of the ratio split of the classes")

    def validate(self) -> None:
        super().validate()
        if sum(self.split_ratio) <= 0:
            raise ConfigError(f"split_ratio must have a positive share, got {list(self.split_ratio)}")


class ImageFolderSampler(EpisodeSampler):
    """N-way K-shot episodes from a folder of images: ``(T, ways*shots, C, size, size)``
    float32 in [0, 1] (``C`` is 1 for gray, 3 for RGB)."""

    Options = ImageFolderOptions

    def __init__(self, split: str = "train", seed: int = 0, data_dir: str | None = None, **options: Any) -> None:
        o = self.Options.parse(options, owner="task sampler 'image-folder'")
        if o.root is None:
            raise ConfigError(
                "task sampler 'image-folder' needs tasks.root, the folder of class folders "
                "(ROOT/<class>/<images>), e.g. --set tasks.root=PATH"
            )
        root = Path(o.root).expanduser()
        if not root.is_absolute() and data_dir is not None and not root.exists():
            root = Path(data_dir) / root
        rng = split_rng(seed, split)
        split_files = Path(o.split_files).expanduser() if o.split_files else None
        suffixes = image_suffixes()
        by_split = {
            s: [list_class(f, suffixes) for f in folders]
            for s, folders in split_classes(root, split_files, o.split_ratio, o.split_seed).items()
        }
        classes = by_split[split]
        color = o.color if o.color != "auto" else detect_color([c for s in SPLITS for c in by_split[s]])
        where = f" in the {split} split of {root}"
        if o.ways > len(classes):
            raise ConfigError(f"ways={o.ways} exceeds the {len(classes)} classes{where}; choose ways <= {len(classes)}")
        needed = o.shots + o.queries
        smallest = min(classes, key=lambda c: len(c.files))
        if len(smallest.files) < needed:
            raise DatasetError(
                f"class folder {smallest.folder} has {len(smallest.files)} images, "
                f"fewer than shots + queries = {needed}"
            )
        self.root, self.split, self.color, self.classes = root, split, color, [c.name for c in classes]
        self.image_size = o.image_size
        self.images = load_split(root, split, classes, o.image_size, color)
        dataset: ClassDataset = FolderImages(self.images, [len(c.files) for c in classes])
        dataset, augmentation = o.apply(dataset, split)
        self.dataset = dataset
        self.episodes = NWayKShot(
            dataset,
            o.ways,
            o.shots,
            o.queries,
            rng,
            augmentation,
            split_rng(seed, split, stream=1) if augmentation else None,
            where=where,
        )
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(COLORS[color], o.image_size, o.image_size),
            output_size=o.ways,
            num_classes=dataset.num_classes,
            default_model="conv4",
        )

    def read_examples(self, paths: list[Path]) -> np.ndarray:
        """Image files as this sampler's examples, float32 ``(N, C, size, size)`` in [0, 1]:
        converted and resized as the cache was (``metaplug predict``)."""
        size = (self.image_size, self.image_size)
        return np.stack([decode_image(p, size, self.color) for p in paths]).astype(np.float32) / np.float32(255)


def load_split(root: Path, split: str, classes: list[ClassFolder], size: int, color: str) -> np.ndarray:
    """The split's images, class by class, as uint8 ``(N, C, size, size)`` from the cache
    (decoded into it on first use)."""
    paths = [p for c in classes for p in c.files]
    key = files_key(paths, root, f"{size}px", color, "lanczos")
    shape = (len(paths), COLORS[color], size, size)
    name = f"imagefolder-{_slug(root)}-{split}"
    return cached_array(name, key, shape, lambda out: decode_images(paths, out))


def _slug(root: Path) -> str:
    """A short readable name for the cache file: the folder's name, safe characters only."""
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in root.resolve().name)[:40]
    return name or "root"


__all__ = ["FolderImages", "ImageFolderOptions", "ImageFolderSampler", "load_split"]

"""A labelled support set and query inputs read from files, for ``predict`` and ``export``.

Images: a support set is a folder of class sub-folders of images (``DIR/<class>/<image>``,
classes in sorted order); queries are image files or folders of them. Each image is read
as the run's task sampler reads its own (its optional ``read_examples(paths)``, e.g.
Omniglot inverts strokes), or else converted to the run's channels (grey or RGB), resized
to its height and width and scaled to ``[0, 1]``.

Tables: a CSV file with a header row, one example per row: the input features first, then
the targets (regression: ``output_size`` numeric columns) or the class name
(classification). Queries may leave out the targets. A sampler's optional
``prepare_features(x)`` (e.g. standardisation with the training split's statistics) is
applied to the features.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract.interfaces import TaskSpec
from metaplug.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
TABLE_SUFFIXES = frozenset({".csv"})


@dataclass(frozen=True)
class Examples:
    """Inputs ``(N, *input_shape)`` float32, their labels or targets (``None`` when not
    given), where each came from, and the class names that labels index."""

    x: np.ndarray
    y: np.ndarray | None
    names: list[str]
    classes: list[str] = field(default_factory=list)


def read_support(path: str | Path, spec: TaskSpec, sampler: Any = None) -> Examples:
    """The labelled support set at ``path``: a folder of class folders of images, or a CSV."""
    path = Path(path)
    if is_table(path):
        return read_table(path, spec, sampler, targets=True)
    if not path.is_dir():
        raise ConfigError(f"support set {path} is neither a folder of class folders of images nor a .csv file")
    require_images(spec, path)
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"support set {path} has no class folders: put each class's images in {path}/<class>/")
    files, labels = [], []
    for label, folder in enumerate(folders):
        images = image_files(folder)
        if not images:
            raise ConfigError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += images
        labels += [label] * len(images)
    x = read_images(files, spec, sampler)
    return Examples(x, np.asarray(labels, dtype=np.int64), [str(f) for f in files], [f.name for f in folders])


def read_queries(paths: Sequence[str | Path], spec: TaskSpec, sampler: Any = None) -> Examples:
    """Query inputs: image files and folders of images, or one CSV file (targets optional)."""
    files_given = [Path(p) for p in paths]
    if not files_given:
        raise ConfigError("no queries: give image files, folders of images or a .csv file")
    tables = [p for p in files_given if is_table(p)]
    if tables:
        if len(files_given) > 1:
            raise ConfigError("give the queries either as one .csv file or as images, not both")
        return read_table(tables[0], spec, sampler, targets=False)
    require_images(spec, files_given[0])
    files: list[Path] = []
    for p in files_given:
        if p.is_dir():
            found = image_files(p, recursive=True)
            if not found:
                raise ConfigError(f"query folder {p} holds no images")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"query {p} does not exist")
    return Examples(read_images(files, spec, sampler), None, [str(f) for f in files])


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_SUFFIXES


def require_images(spec: TaskSpec, path: Path) -> None:
    if len(spec.input_shape) != 3:
        raise ConfigError(
            f"the run takes inputs of shape {tuple(spec.input_shape)}, not images: give a .csv file instead of {path}"
        )


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and below, when ``recursive``), sorted by name."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_images(files: Sequence[Path], spec: TaskSpec, sampler: Any = None) -> np.ndarray:
    """``(N, C, H, W)`` float32 examples for the image files, read as the run's sampler reads them."""
    reader = getattr(sampler, "read_examples", None)
    if callable(reader):
        x = np.asarray(reader(list(files)), dtype=np.float32)
    else:
        x = np.stack([read_image(f, tuple(spec.input_shape)) for f in files])
    if x.shape[1:] != tuple(spec.input_shape):
        raise ConfigError(f"the images read as shape {x.shape[1:]}; the run was trained on {tuple(spec.input_shape)}")
    return x


def read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One image as ``shape`` ``(C, H, W)``: grey (C = 1) or RGB (C = 3), resized, in ``[0, 1]``."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    if channels not in (1, 3):
        raise ConfigError(f"the run takes images with {channels} channels; only grey (1) or RGB (3) can be read")
    try:
        with Image.open(path) as image:
            mode = "L" if channels == 1 else "RGB"
            pixels = np.asarray(image.convert(mode).resize((width, height), Image.Resampling.LANCZOS), np.float32) / 255
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    return pixels[None] if channels == 1 else np.moveaxis(pixels, -1, 0)


def read_table(path: Path, spec: TaskSpec, sampler: Any, targets: bool) -> Examples:
    """Examples from a CSV file (see the module docstring); ``targets`` says they are required."""
    if len(spec.input_shape) != 1:
        raise ConfigError(f"the run takes inputs of shape {tuple(spec.input_shape)}: give images, not {path}")
    if not path.is_file():
        raise ConfigError(f"table {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if len(rows) < 2:
        raise ConfigError(f"{path} needs a header row and at least one example")
    header, rows = rows[0], rows[1:]
    features = spec.input_shape[0]
    target_columns = spec.output_size if spec.problem == "regression" else 1
    allowed = (features + target_columns,) if targets else (features, features + target_columns)
    if len(header) not in allowed:
        wanted = " or ".join(str(n) for n in allowed)
        raise ConfigError(
            f"{path} has {len(header)} columns; the run needs {wanted}: {features} feature(s)"
            + (f", then {target_columns} target column(s)" if spec.problem == "regression" else ", then the class")
        )
    numeric = len(header) if spec.problem == "regression" else features
    values = np.empty((len(rows), numeric), dtype=np.float64)
    for i, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ConfigError(f"{path} row {i} has {len(row)} values, the header {len(header)}")
        for j in range(numeric):
            try:
                values[i - 2, j] = float(row[j])
            except ValueError:
                raise ConfigError(f"{path} row {i}, column {header[j]!r}: {row[j]!r} is not a number") from None
    x = values[:, :features]
    prepare = getattr(sampler, "prepare_features", None)
    if callable(prepare):
        x = np.asarray(prepare(x))
    names = [f"row {i}" for i in range(2, len(rows) + 2)]
    if len(header) == features:
        return Examples(x.astype(np.float32), None, names)
    if spec.problem == "regression":
        return Examples(x.astype(np.float32), values[:, features:].astype(np.float32), names)
    labels = [row[features] for row in rows]
    classes = sorted(set(labels))
    index = {name: k for k, name in enumerate(classes)}
    return Examples(x.astype(np.float32), np.asarray([index[n] for n in labels], dtype=np.int64), names, classes)

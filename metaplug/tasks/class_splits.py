"""Splitting a dataset's classes (or tasks) into train, val and test: by split files or by
a seeded ratio."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metaplug.contract.interfaces import SPLITS
from metaplug.errors import ConfigError, DatasetError

SPLIT_FILE_SUFFIXES = (".csv", ".txt")
CLASS_COLUMNS = ("label", "class")
"""CSV split files name the class in the first of these columns that they have (Ravi &
Larochelle's mini-ImageNet files: ``filename,label``), else in their only column."""


def split_file(folder: Path, split: str) -> Path:
    """``folder/<split>.csv`` or ``folder/<split>.txt``; one line naming both if neither exists."""
    for suffix in SPLIT_FILE_SUFFIXES:
        path = folder / f"{split}{suffix}"
        if path.is_file():
            return path
    if not folder.is_dir():
        raise DatasetError(f"split_files folder {folder} does not exist")
    raise DatasetError(f"split file {folder / split}.csv (or .txt) not found; it lists the {split} classes")


def read_split_file(path: Path) -> list[str]:
    """The class names a split file lists, in first-seen order, without repeats.

    A ``.txt`` file names one class per line (blank lines and ``#`` comments skipped); a
    ``.csv`` file has a header and a ``label`` or ``class`` column (or a single column).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read split file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if path.suffix == ".txt":
        names = [line.strip() for line in text.splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
    else:
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise DatasetError(f"split file {path} is empty")
        header = [h.strip() for h in rows[0]]
        column = next((header.index(c) for c in CLASS_COLUMNS if c in header), 0 if len(header) == 1 else None)
        if column is None:
            raise DatasetError(
                f"split file {path} has columns {', '.join(header)}; it needs a 'label' or 'class' column"
            )
        names = []
        for number, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) <= column:
                raise DatasetError(f"split file {path}, line {number}: no value in column {header[column]!r}")
            names.append(row[column].strip())
    if not names:
        raise DatasetError(f"split file {path} names no classes")
    return list(dict.fromkeys(names))


def ratio_split(names: Sequence[str], ratios: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """``names`` (sorted first) shuffled with ``numpy.random.default_rng(seed)`` and cut
    into train, val and test by ``ratios`` (normalised; each split gets at least one name
    when its ratio is positive). Returns each split's names, sorted."""
    if len(ratios) != len(SPLITS) or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError(f"split_ratio must be three non-negative shares of train, val and test, got {list(ratios)}")
    ordered = sorted(names)
    wanted = sum(r > 0 for r in ratios)
    if len(ordered) < wanted:
        raise DatasetError(
            f"{len(ordered)} classes cannot be split into {wanted} non-empty splits by split_ratio {list(ratios)}"
        )
    shares = np.asarray(ratios, dtype=float) / sum(ratios)
    counts = [max(1, round(s * len(ordered))) if s > 0 else 0 for s in shares]
    counts[0] = len(ordered) - sum(counts[1:])
    while counts[0] < (1 if shares[0] > 0 else 0):  # rounding gave val and test too much
        largest = 1 + int(np.argmax(counts[1:]))
        counts[largest] -= 1
        counts[0] += 1
    order = np.random.default_rng(seed).permutation(len(ordered))
    bounds = np.cumsum([0, *counts])
    return {split: sorted(ordered[i] for i in order[bounds[k] : bounds[k + 1]]) for k, split in enumerate(SPLITS)}

"""Small generated datasets in the layouts users have: image folders and tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def class_image(label: int, index: int, side: int, color: str) -> np.ndarray:
    """A uint8 image of class ``label``: a class-specific stripe pattern plus seeded noise."""
    rng = np.random.default_rng([label, index])
    grid = np.arange(side)
    pattern = 0.5 + 0.5 * np.sin((label + 1) * (grid[:, None] + 2 * grid[None, :]) / side * np.pi)
    pixels = np.clip(255 * (pattern + rng.normal(0, 0.1, (side, side))), 0, 255).astype(np.uint8)
    if color == "gray":
        return pixels
    return np.stack([pixels, np.roll(pixels, label, axis=0), 255 - pixels], axis=-1)


def make_image_folder(
    root: Path,
    classes: int = 6,
    per_class: int = 8,
    side: int = 20,
    color: str = "rgb",
    splits: tuple[str, ...] = (),
    formats: tuple[str, ...] = ("png", "jpg"),
) -> Path:
    """``root/<class>/<n>.<fmt>`` (or ``root/<split>/<class>/...`` for each of ``splits``,
    ``classes`` classes each), alternating the formats."""
    from PIL import Image

    parents = [root / s for s in splits] or [root]
    label = 0
    for parent in parents:
        for _ in range(classes):
            folder = parent / f"class{label:02d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = Image.fromarray(class_image(label, i, side, color))
                image.save(folder / f"{i:03d}.{formats[i % len(formats)]}")
            label += 1
    return root


def make_regression_csv(path: Path, tasks: int = 12, rows: int = 24, seed: int = 0) -> Path:
    """A family of linear regression tasks: ``y = a * x1 + b * x2 + c`` per ``task``, with
    features far from zero mean and unit scale (so standardisation matters)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "x1", "x2", "y"])
        for t in range(tasks):
            a, b, c = rng.uniform(-2, 2, size=3)
            for _ in range(rows):
                x1, x2 = rng.normal(100, 10), rng.normal(-5, 0.1)
                y = a * (x1 - 100) / 10 + b * (x2 + 5) / 0.1 + c
                writer.writerow([f"site-{t}", f"{x1:.6f}", f"{x2:.6f}", f"{y:.6f}"])
    return path


def make_classes_csv(path: Path, classes: int = 10, rows: int = 12, features: int = 4, seed: int = 0) -> Path:
    """Gaussian clusters, one per ``species``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(classes, features))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["species", *(f"f{k}" for k in range(features))])
        for c in range(classes):
            for _ in range(rows):
                writer.writerow([f"s{c}", *(f"{v:.5f}" for v in centres[c] + rng.normal(0, 0.5, features))])
    return path

"""Omniglot (Lake et al. 2015) as N-way K-shot classification episodes.

Reads the original ``images_background.zip`` and ``images_evaluation.zip`` from
a local folder (``root``, or ``$METAPLUG_DATA_DIR/omniglot``) or downloads them
from the dataset's public repository. Images are resized to ``image_size``
(Lanczos), inverted so strokes are 1 and background 0, and cached decoded.

Split (as in Finn et al. 2017 and learn2learn): the 1623 characters, sorted by
path, are shuffled with ``numpy.random.default_rng(split_seed)``; the first 1100
are for meta-training, the next 100 for validation and the remaining 423 for
testing. With ``rotations`` each character also appears rotated by 90, 180 and
270 degrees as three further classes of the same split.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract.interfaces import TaskSpec
from metaplug.contract.options import Options, option
from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks.datasets import cache_dir, data_dir, download, file_digest, read_sha256sums
from metaplug.tasks.episodes import EpisodeSampler, NWayKShot, split_rng

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
ARCHIVES: dict[str, str] = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
"""Archive stem -> MD5 of the upstream zip."""

NUM_CHARACTERS = 1623
DRAWERS = 20
SPLIT_SIZES = {"train": 1100, "val": 100, "test": 423}


@dataclass(frozen=True)
class OmniglotImages:
    """All characters decoded: ``images`` is uint8 ``(1623, 20, size, size)``."""

    images: np.ndarray
    characters: np.ndarray  # str ``(1623,)``: "images_background/<Alphabet>/characterNN"


def locate(root: str | os.PathLike[str] | None = None, download_missing: bool = False) -> Path:
    """The folder holding both archives, downloading them into it if asked."""
    folder = Path(root).expanduser() if root else data_dir("omniglot")
    missing = [s for s in ARCHIVES if not (folder / f"{s}.zip").is_file()]
    if missing and download_missing:
        for stem in missing:
            download(f"{BASE_URL}{stem}.zip", folder / f"{stem}.zip", ARCHIVES[stem])
    elif missing:
        raise DatasetError(
            f"Omniglot archive {missing[0]}.zip not found in {folder}; point --data-dir (or METAPLUG_DATA_DIR) "
            "at a folder containing omniglot/, or fetch it with --set tasks.download=true "
            "(from Python: root=... or download=True)"
        )
    return folder


def verify(folder: Path) -> str:
    """Check both archives against the upstream MD5s or the folder's ``SHA256SUMS``;
    return a fingerprint of their contents (for the cache's name)."""
    sums = read_sha256sums(folder)
    fingerprint = []
    for stem, md5 in ARCHIVES.items():
        path = folder / f"{stem}.zip"
        sha256 = file_digest(path, "sha256")
        fingerprint.append(sha256)
        expected = sums.get(path.name)
        if expected is not None and expected != sha256:
            raise DatasetError(
                f"{path} is corrupt (SHA-256 does not match {folder / 'SHA256SUMS'}); replace it with a fresh copy"
            )
        if expected is None and file_digest(path, "md5") != md5:
            raise DatasetError(
                f"{path} is corrupt or not the original archive (MD5 mismatch); "
                "delete it and run again with --set tasks.download=true (from Python: download=True)"
            )
    return "".join(fingerprint)


def load_images(
    root: str | os.PathLike[str] | None = None, image_size: int = 28, download: bool = False
) -> OmniglotImages:
    """Decoded Omniglot; the first call decodes the archives (a few seconds) and caches them."""
    folder = locate(root, download)
    return _load_cached(str(folder.resolve()), image_size, verify(folder)[:16])


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str, image_size: int, fingerprint: str) -> OmniglotImages:
    cache = cache_dir() / f"omniglot-{image_size}px-{fingerprint}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                return OmniglotImages(data["images"], data["characters"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable cache: decode again and overwrite it
    decoded = _decode(Path(folder), image_size)
    _save_atomically(cache, images=decoded.images, characters=decoded.characters)
    return decoded


def _decode(folder: Path, image_size: int) -> OmniglotImages:
    from PIL import Image, UnidentifiedImageError

    characters: dict[str, list[np.ndarray]] = {}
    for stem in ARCHIVES:
        path = folder / f"{stem}.zip"
        try:
            with zipfile.ZipFile(path) as archive:
                for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
                    with Image.open(io.BytesIO(archive.read(name))) as image:
                        small = image.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
                    characters.setdefault(name.rsplit("/", 1)[0], []).append(255 - np.asarray(small))
        except (zipfile.BadZipFile, zlib.error, UnidentifiedImageError, OSError, EOFError, ValueError) as exc:
            raise DatasetError(f"{path} is corrupt ({exc}); replace it or delete it and download again") from exc
    if len(characters) != NUM_CHARACTERS or any(len(v) != DRAWERS for v in characters.values()):
        raise DatasetError(
            f"{folder} does not hold the {NUM_CHARACTERS} characters x {DRAWERS} drawers "
            f"of Omniglot (found {len(characters)} characters); replace the archives"
        )
    names = sorted(characters)
    images = np.stack([np.stack(characters[n]) for n in names]).astype(np.uint8)
    return OmniglotImages(images, np.array(names))


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # a cache that cannot be written only costs time


def split_characters(split: str, split_seed: int = 1) -> np.ndarray:
    """Indices (into the sorted 1623 characters) of the characters in ``split``."""
    if split not in SPLIT_SIZES:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_SIZES)}")
    order = np.random.default_rng(split_seed).permutation(NUM_CHARACTERS)
    start = {"train": 0, "val": 1100, "test": 1200}[split]
    return np.sort(order[start : start + SPLIT_SIZES[split]])


class RotatedCharacters:
    """A :class:`~metaplug.tasks.episodes.ClassDataset` of characters, each rotated by
    0, 90, 180 and 270 degrees (class ``4 * character + k``) when ``rotations``."""

    def __init__(self, images: np.ndarray, rotations: bool = True) -> None:
        self.images = images
        self.turns = 4 if rotations else 1

    @property
    def num_classes(self) -> int:
        return len(self.images) * self.turns

    def class_size(self, label: int) -> int:
        return self.images.shape[1]

    def examples(self, label: int, indices: np.ndarray) -> np.ndarray:
        character, turn = divmod(label, self.turns)
        pixels = np.rot90(self.images[character, indices], k=turn, axes=(-2, -1))
        return (pixels.astype(np.float32) / 255.0)[:, None]  # (n, 1, size, size)


@dataclass(frozen=True)
class OmniglotOptions(Options):
    """Omniglot N-way K-shot episodes."""

    ways: int = option(5, minimum=1, help="classes per episode")
    shots: int = option(1, minimum=1, help="support examples per class")
    queries: int = option(15, minimum=1, help="query examples per class")
    root: str | None = option(None, path=True, help="folder with the archives (default: DATA_DIR/omniglot)")
    image_size: int = option(28, minimum=8, maximum=105, help="side of the resized images")
    rotations: bool = option(True, help="rotations by 90, 180 and 270 degrees as extra classes")
    download: bool = option(False, help="fetch the archives when they are missing")
    split_seed: int = option(1, minimum=0, help="seed of the character split")


class OmniglotSampler(EpisodeSampler):
    """N-way K-shot Omniglot episodes: ``(T, ways*shots, 1, size, size)`` float32 in [0, 1]."""

    Options = OmniglotOptions

    def __init__(self, split: str = "train", seed: int = 0, data_dir: str | None = None, **options: Any) -> None:
        o = self.Options.parse(options, owner="task sampler 'omniglot'")
        root = o.root if o.root is not None or data_dir is None else Path(data_dir) / "omniglot"
        rng = split_rng(seed, split)
        data = load_images(root, o.image_size, o.download)
        self.dataset = RotatedCharacters(data.images[split_characters(split, o.split_seed)], o.rotations)
        self.episodes = NWayKShot(self.dataset, o.ways, o.shots, o.queries, rng)
        self.split, self.image_size = split, o.image_size
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(1, o.image_size, o.image_size),
            output_size=o.ways,
            num_classes=self.dataset.num_classes,
            default_model="conv4",
        )

    def read_examples(self, paths: list[Path]) -> np.ndarray:
        """Image files as this sampler's examples ``(N, 1, size, size)``: grey, resized (Lanczos)
        and inverted, so dark strokes on a light background become 1 on 0 (``metaplug predict``)."""
        from PIL import Image, UnidentifiedImageError

        examples = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    small = image.convert("L").resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DatasetError(f"cannot read image {path}: {exc}") from None
            examples.append((255 - np.asarray(small)).astype(np.float32) / 255.0)
        return np.stack(examples)[:, None]

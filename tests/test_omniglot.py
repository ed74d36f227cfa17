"""Omniglot from the real archives in ``$METAPLUG_DATA_DIR/omniglot`` (the shared data)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks import omniglot
from metaplug.tasks.omniglot import OmniglotSampler, load_images, split_characters

DATA = Path(os.environ.get("METAPLUG_DATA_DIR", "")) / "omniglot"
pytestmark = pytest.mark.skipif(
    not (DATA / "images_background.zip").is_file(), reason="real Omniglot not found; set METAPLUG_DATA_DIR"
)


def test_decoded_images():
    data = load_images()
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == np.uint8
    assert data.characters[0].startswith("images_background/") and data.characters[-1].startswith("images_evaluation/")
    strokes = data.images.astype(np.float32).mean() / 255
    assert 0.05 < strokes < 0.25  # inverted: strokes bright on a dark background


def test_splits_are_disjoint_and_standard_sized():
    parts = {s: set(split_characters(s)) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
    assert set.union(*parts.values()) == set(range(1623))


def test_episodes_shapes_labels_and_rotations():
    sampler = OmniglotSampler("train", seed=0, ways=5, shots=1, queries=15)
    assert sampler.spec.num_classes == 4400 and sampler.spec.input_shape == (1, 28, 28)
    batch = sampler.sample(8)
    assert batch.support_x.shape == (8, 5, 1, 28, 28) and batch.query_x.shape == (8, 75, 1, 28, 28)
    assert batch.support_x.dtype == np.float32 and batch.support_x.min() >= 0.0 and batch.support_x.max() <= 1.0
    assert batch.query_y.min() == 0 and batch.query_y.max() == 4
    dataset = sampler.dataset
    upright = dataset.examples(0, np.arange(3))
    np.testing.assert_array_equal(dataset.examples(1, np.arange(3)), np.rot90(upright, 1, axes=(-2, -1)))
    np.testing.assert_array_equal(dataset.examples(2, np.arange(3)), np.rot90(upright, 2, axes=(-2, -1)))


def test_same_seed_same_episodes_and_test_split_is_unseen():
    a = OmniglotSampler("test", seed=7, ways=20, shots=5, queries=5).sample(2)
    b = OmniglotSampler("test", seed=7, ways=20, shots=5, queries=5).sample(2)
    np.testing.assert_array_equal(a.query_x, b.query_x)
    digest = hashlib.sha256(a.support_x.tobytes()).hexdigest()
    assert digest == hashlib.sha256(b.support_x.tobytes()).hexdigest()
    assert OmniglotSampler("test", seed=0).spec.num_classes == 423 * 4
    assert OmniglotSampler("val", seed=0, rotations=False).spec.num_classes == 100


def test_second_load_comes_from_the_cache(monkeypatch):
    load_images()
    omniglot._load_cached.cache_clear()
    monkeypatch.setattr(omniglot, "_decode", lambda *a: pytest.fail("decoded again instead of using the cache"))
    assert load_images().images.shape[0] == 1623


def test_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="smallest class"):
        OmniglotSampler("train", shots=10, queries=15)
    with pytest.raises(ConfigError, match="image_size"):
        OmniglotSampler("train", image_size=200)


def test_missing_archive_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="images_background.zip not found.*METAPLUG_DATA_DIR.*download"):
        load_images(tmp_path)


def test_corrupt_archive_is_detected(tmp_path):
    for name in ("images_background.zip", "images_evaluation.zip", "SHA256SUMS"):
        shutil.copy(DATA / name, tmp_path / name)
    target = tmp_path / "images_evaluation.zip"
    target.chmod(0o644)
    payload = bytearray(target.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    target.write_bytes(bytes(payload))
    with pytest.raises(DatasetError, match="images_evaluation.zip is corrupt"):
        load_images(tmp_path)


def test_download_verifies_checksums(tmp_path, monkeypatch):
    """The real download path, served from a local mirror through a file:// URL."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checksums = {}
    for stem in omniglot.ARCHIVES:
        shutil.copy(DATA / f"{stem}.zip", mirror / f"{stem}.zip")
        checksums[stem] = hashlib.md5((mirror / f"{stem}.zip").read_bytes()).hexdigest()
    monkeypatch.setattr(omniglot, "BASE_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(omniglot, "ARCHIVES", checksums)
    target = tmp_path / "downloaded"
    assert load_images(target, download=True).images.shape == (1623, 20, 28, 28)
    assert sorted(p.name for p in target.iterdir()) == ["images_background.zip", "images_evaluation.zip"]

    monkeypatch.setattr(omniglot, "ARCHIVES", {**checksums, "images_background": "0" * 32})
    with pytest.raises(DatasetError, match="MD5"):
        load_images(tmp_path / "elsewhere", download=True)
    assert not (tmp_path / "elsewhere" / "images_background.zip").exists()

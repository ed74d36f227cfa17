"""The augmentations themselves: what each does to an image, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug.tasks.augment import Augmentation, check_names


@pytest.fixture
def images():
    return np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32)


def test_flip_mirrors_exactly_the_drawn_images(images):
    flips = np.array([True, False, True, False, False, True])
    out = Augmentation(("flip",)).apply(images, {"flip": flips})
    np.testing.assert_array_equal(out[flips], images[flips][..., ::-1])
    np.testing.assert_array_equal(out[~flips], images[~flips])


def test_crop_shifts_the_padded_image(images):
    augmentation = Augmentation(("crop",), padding=2)
    centred = augmentation.apply(images, {"crop": np.full((6, 2), 2)})
    np.testing.assert_array_equal(centred, images)
    corner = augmentation.apply(images, {"crop": np.zeros((6, 2), dtype=np.int64)})
    np.testing.assert_array_equal(corner[:, :, 2:, 2:], images[:, :, :-2, :-2])
    assert not corner[:, :, :2].any() and not corner[:, :, :, :2].any()  # the zero padding came in


def test_crop_matches_cropping_the_padded_image():
    images = np.random.default_rng(2).random((40, 3, 7, 9), dtype=np.float32)
    offsets = np.random.default_rng(3).integers(0, 2 * 8 + 1, size=(40, 2))  # some shifted out entirely
    out = Augmentation(("crop",), padding=8).apply(images, {"crop": offsets})
    padded = np.pad(images, ((0, 0), (0, 0), (8, 8), (8, 8)))
    for i, (top, left) in enumerate(offsets):
        np.testing.assert_array_equal(out[i], padded[i, :, top : top + 7, left : left + 9])


def test_jitter_keeps_pixels_in_range_and_factor_one_is_identity(images):
    augmentation = Augmentation(("jitter",), jitter=0.9)
    np.testing.assert_allclose(augmentation.apply(images, {"jitter": np.ones((6, 3), np.float32)}), images, atol=1e-6)
    drawn = augmentation.draw(np.random.default_rng(1), 6)
    out = augmentation.apply(images, drawn)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1 and not np.allclose(out, images)
    brighter = augmentation.apply(images, {"jitter": np.array([[1.5, 1, 1]] * 6, np.float32)})
    assert brighter.mean() > images.mean()


def test_draws_are_seeded_and_in_a_fixed_order():
    augmentation = Augmentation(("crop", "flip", "jitter"), padding=3)
    a = augmentation.draw(np.random.default_rng(5), 10)
    b = augmentation.draw(np.random.default_rng(5), 10)
    assert a.keys() == b.keys() == {"crop", "flip", "jitter"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["crop"].min() >= 0 and a["crop"].max() <= 6


def test_names_are_checked():
    check_names(("crop", "rotate"))
    with pytest.raises(ConfigError, match="unknown augmentation 'blur'"):
        check_names(("blur",))
    with pytest.raises(ConfigError, match="twice"):
        check_names(("flip", "flip"))

"""The image-folder sampler: layouts, splits, colour, augmentation and bad folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from own_data import make_image_folder

from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks.imagefolder import ImageFolderSampler
from metaplug.testing.samplers import TaskSamplerConformance, assert_same_episodes


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("conformance") / "images", classes=12)


class TestImageFolderConformance(TaskSamplerConformance):
    sampler = "image-folder"
    options: ClassVar[dict[str, Any]] = {
        "ways": 3,
        "shots": 2,
        "queries": 2,
        "image_size": 16,
        "split_ratio": [0.5, 0.25, 0.25],
    }

    root: ClassVar[Path]

    @pytest.fixture(autouse=True)
    def _folder(self, shared_folder):
        type(self).root = shared_folder

    def make(self, split="train", seed=0):
        return self.load()(split=split, seed=seed, root=str(self.root), **self.options)


def sampler(root, split="train", **options):
    settings = {"ways": 2, "shots": 1, "queries": 2, "image_size": 16, **options}
    return ImageFolderSampler(split, seed=0, root=str(root), **settings)


def test_ratio_split_is_seeded_disjoint_and_covers_every_class(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=10, per_class=4)
    parts = {s: sampler(root, s, split_ratio=[0.6, 0.2, 0.2]).classes for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(c for names in parts.values() for c in names) == [f"class{k:02d}" for k in range(10)]
    assert sampler(root, "val", split_seed=1).classes != sampler(root, "val", split_seed=0).classes
    batch = sampler(root).sample(2)
    assert batch.support_x.shape == (2, 2, 3, 16, 16) and batch.query_x.shape == (2, 4, 3, 16, 16)
    assert batch.support_x.dtype == np.float32 and batch.support_x.min() >= 0 and batch.support_x.max() <= 1


def test_split_folders_and_split_files(tmp_path):
    folders = make_image_folder(tmp_path / "by-folder", classes=2, per_class=3, splits=("train", "val", "test"))
    assert sampler(folders, "val").classes == ["class02", "class03"]
    with pytest.raises(ConfigError, match="remove split_files"):
        sampler(folders, split_files=str(tmp_path))
    flat = make_image_folder(tmp_path / "flat", classes=6, per_class=3)
    lists = tmp_path / "splits"
    lists.mkdir()
    (lists / "train.csv").write_text("filename,label\na.jpg,class04\nb.jpg,class00\nc.jpg,class04\n")
    (lists / "val.txt").write_text("# validation classes\nclass01\nclass02\n")
    (lists / "test.txt").write_text("class03\nclass05\n")
    assert sampler(flat, "train", split_files=str(lists)).classes == ["class04", "class00"]
    assert sampler(flat, "val", split_files=str(lists)).classes == ["class01", "class02"]
    (lists / "test.txt").write_text("class03\nclass99\n")
    with pytest.raises(DatasetError, match="test.txt names class 'class99', which is not a folder in"):
        sampler(flat, "train", split_files=str(lists))


def test_read_examples_reads_files_as_the_cache_holds_them(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=4, per_class=3)
    train = sampler(root, split_ratio=[0.5, 0.25, 0.25])
    files = sorted((root / train.classes[0]).iterdir())
    np.testing.assert_array_equal(train.read_examples(files), train.images[:3] / np.float32(255))


def test_grayscale_folders_give_one_channel(tmp_path):
    root = make_image_folder(tmp_path / "gray", classes=4, per_class=3, color="gray")
    assert sampler(root, split_ratio=[0.5, 0.25, 0.25]).spec.input_shape == (1, 16, 16)
    assert sampler(root, split_ratio=[0.5, 0.25, 0.25], color="rgb").spec.input_shape == (3, 16, 16)


def test_augmentations_are_seeded_saved_and_off_for_evaluation(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=8, per_class=4)
    plain = sampler(root, split_ratio=[0.5, 0.25, 0.25])
    augmented = sampler(root, split_ratio=[0.5, 0.25, 0.25], augment=["crop", "flip", "jitter"])
    a, b = plain.sample(3), augmented.sample(3)
    np.testing.assert_array_equal(a.classes, b.classes)  # the episodes are the same, their pixels are not
    assert not np.array_equal(a.support_x, b.support_x)
    state = augmented.state_dict()
    expected = augmented.sample(3)
    again = sampler(root, split_ratio=[0.5, 0.25, 0.25], augment=["crop", "flip", "jitter"])
    again.load_state_dict(state)
    assert_same_episodes(again.sample(3), expected)
    assert "augment_rng" in state and set(state) == {"rng", "augment_rng"}
    val = {"split_ratio": [0.5, 0.25, 0.25], "augment": ["crop", "rotate"]}
    assert_same_episodes(
        sampler(root, "val", **val).sample(2), sampler(root, "val", split_ratio=[0.5, 0.25, 0.25]).sample(2)
    )
    assert sampler(root, "val", augment_eval=True, **val).spec.num_classes == 8
    assert sampler(root, "train", **val).spec.num_classes == 16


def test_rotations_are_new_classes(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=4, per_class=3)
    rotated = sampler(root, split_ratio=[1, 0, 0], augment=["rotate"])
    upright = rotated.dataset.examples(0, np.arange(3))
    np.testing.assert_array_equal(rotated.dataset.examples(1, np.arange(3)), np.rot90(upright, 1, axes=(-2, -1)))
    assert rotated.spec.num_classes == 16


@pytest.mark.parametrize(
    "break_it, options, message",
    [
        (
            lambda root: (root / "class00" / "000.png").unlink() or None,
            {"shots": 4, "queries": 4},
            "class00 has 7 images, fewer than shots \\+ queries = 8",
        ),
        (lambda root: [p.unlink() for p in (root / "class01").iterdir()], {}, "class01 holds no images"),
        (
            lambda root: (root / "class02" / "001.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut"),
            {},
            "cannot read image .*001.jpg",
        ),
        (lambda root: None, {"ways": 9}, "ways=9 exceeds the 3 classes in the train split of"),
        (
            lambda root: None,
            {"augment": ["blur"]},
            "unknown augmentation 'blur'; choose from crop, flip, jitter, rotate",
        ),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, break_it, options, message):
    root = make_image_folder(tmp_path / "images", classes=4, per_class=8)
    break_it(root)
    with pytest.raises((ConfigError, DatasetError), match=message):
        sampler(root, split_ratio=[0.75, 0.25, 0], **options)


def test_no_root_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="needs tasks.root"):
        ImageFolderSampler("train", 0)
    with pytest.raises(DatasetError, match="does not exist"):
        sampler(tmp_path / "nowhere")

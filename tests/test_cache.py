"""The decode cache: decoded once, keyed by the files, atomic, uint8 and memory-mapped."""

from __future__ import annotations

import os

import numpy as np
import pytest
from own_data import class_image, make_image_folder
from PIL import Image

from metaplug.errors import DatasetError
from metaplug.tasks.cache import cached_array, decode_image, decode_images, files_key


def paths_of(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_decoded_once_then_memory_mapped_and_rebuilt_when_a_file_changes(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=2, per_class=3)
    cache, paths, calls = tmp_path / "cache", paths_of(tmp_path / "images"), []

    def fill(out):
        calls.append(1)
        decode_images(paths, out)

    key = files_key(paths, root, "16px")
    assert files_key(paths, root, "32px") != key
    first = cached_array("set", key, (6, 3, 16, 16), fill, cache)
    again = cached_array("set", files_key(paths, root, "16px"), (6, 3, 16, 16), fill, cache)
    assert len(calls) == 1 and isinstance(again, np.memmap) and again.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert [p.name for p in cache.iterdir()] == [f"set-{files_key(paths, root, '16px')}.npy"]
    os.utime(paths[0], ns=(1, 1))  # a touched file is a new key
    assert files_key(paths, root, "16px") != key
    cached_array("set", files_key(paths, root, "16px"), (6, 3, 16, 16), fill, cache)
    assert len(calls) == 2


def test_a_bad_image_names_the_file_and_leaves_nothing_in_the_cache(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=1, per_class=3, formats=("jpg",))
    paths = paths_of(root)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # truncated JPEG
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=f"cannot read image {paths[1]}"):
        cached_array("set", "k", (3, 3, 8, 8), lambda out: decode_images(paths, out), cache)
    assert list(cache.iterdir()) == []
    (root / "notes.png").write_text("not an image")
    with pytest.raises(DatasetError, match="notes.png: not an image format Pillow reads"):
        decode_image(root / "notes.png", (8, 8), "rgb")


def test_a_corrupt_entry_is_rebuilt_and_an_unwritable_folder_decodes_in_memory(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "set-k.npy").write_bytes(b"\x93NUMPY garbage")
    array = cached_array("set", "k", (2, 1, 2, 2), lambda out: out.fill(7), cache)
    assert array.shape == (2, 1, 2, 2) and int(array.sum()) == 56
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    in_memory = cached_array("set", "k", (2, 1, 2, 2), lambda out: out.fill(3), blocked / "cache")
    assert not isinstance(in_memory, np.memmap) and in_memory.dtype == np.uint8 and int(in_memory.sum()) == 24


def test_decoding_converts_colour_and_resizes(tmp_path):
    Image.fromarray(class_image(3, 0, 30, "rgb")).save(tmp_path / "rgb.png")
    Image.fromarray(class_image(3, 0, 30, "gray")).save(tmp_path / "gray.png")
    assert decode_image(tmp_path / "rgb.png", (12, 10), "rgb").shape == (3, 12, 10)
    gray = decode_image(tmp_path / "gray.png", (30, 30), "gray")
    np.testing.assert_array_equal(gray[0], class_image(3, 0, 30, "gray"))
    assert decode_image(tmp_path / "gray.png", (8, 8), "rgb").shape == (3, 8, 8)

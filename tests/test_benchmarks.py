"""The standard benchmarks' loaders on small archives in each real format (tests/benchmark_archives.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import benchmark_archives as make
import numpy as np
import pytest
from PIL import Image

from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks import benchmarks, cifar100, layouts, mini_imagenet, safe_pickle
from metaplug.tasks.cifar100 import CifarFSSampler, FC100Sampler
from metaplug.tasks.cub import CUBSampler
from metaplug.tasks.layouts import read_class_groups, read_class_list
from metaplug.tasks.mini_imagenet import MiniImageNetSampler
from metaplug.tasks.tiered_imagenet import TieredImageNetSampler
from metaplug.testing import TaskSamplerConformance


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache (and remembers digests there)."""
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "cifar-100"
    make.cifar100_binary(folder)
    return folder


def decoded(path: Path | bytes, size: int = 84) -> np.ndarray:
    """What the loader should produce for an encoded image: RGB, Lanczos-resized, (3, size, size) in [0, 1]."""
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.moveaxis(np.asarray(rgb, dtype=np.float32) / 255, -1, 0)


# The published class splits


@pytest.mark.parametrize(
    ("dataset", "sizes"),
    [("mini-imagenet", (64, 16, 20)), ("cifar-fs", (64, 16, 20)), ("fc100", (12, 4, 4)), ("cub", (100, 50, 50))],
)
def test_shipped_splits_have_the_published_sizes_and_are_disjoint(dataset, sizes):
    parts = [read_class_list(dataset, s) for s in ("train", "val", "test")]
    assert tuple(len(p) for p in parts) == sizes
    assert len(set().union(*parts)) == sum(sizes)


def test_tiered_split_groups_classes_by_category():
    groups = [read_class_groups("tiered-imagenet", s) for s in ("train", "val", "test")]
    assert [len(g) for g in groups] == [351, 97, 160]
    assert [len(set(g.values())) for g in groups] == [20, 6, 8]
    assert len(set().union(*groups)) == 608
    categories = [set(g.values()) for g in groups]
    assert not (categories[0] & categories[1] or categories[0] & categories[2] or categories[1] & categories[2])


def test_cub_split_is_chen_et_al_rule_over_the_sorted_folders():
    folders = sorted(c for s in ("train", "val", "test") for c in read_class_list("cub", s))
    assert folders[0] == "001.Black_footed_Albatross" and folders[-1] == "200.Common_Yellowthroat"
    assert read_class_list("cub", "train") == folders[0::2]
    assert read_class_list("cub", "val") == folders[1::4]
    assert read_class_list("cub", "test") == folders[3::4]


# CIFAR-FS and FC100 from CIFAR-100's binary archive


def test_cifar_fs_reads_the_binary_records(cifar):
    sampler = CifarFSSampler("val", seed=0, root=str(cifar), ways=5, shots=2, queries=3)
    assert sampler.classes == read_class_list("cifar-fs", "val")
    assert sampler.spec.input_shape == (3, 32, 32) and sampler.spec.num_classes == 16
    assert sampler.dataset.counts == [6] * 16  # 5 training + 1 test image pooled per class
    # the first image of class 'beaver' is the archive's record for that label, pixel for pixel
    fine = sorted(c for s in ("train", "val", "test") for c in read_class_list("cifar-fs", s))
    label = fine.index("beaver")
    expected = np.moveaxis(make.image(label * 10, (32, 32)), -1, 0).astype(np.float32) / 255
    first = sampler.dataset.examples(sampler.classes.index("beaver"), np.array([0]))[0]
    np.testing.assert_array_equal(first, expected)
    batch = sampler.sample(3)
    assert batch.support_x.shape == (3, 10, 3, 32, 32) and batch.query_x.shape == (3, 15, 3, 32, 32)
    assert batch.support_x.dtype == np.float32 and batch.support_x.min() >= 0 and batch.support_x.max() <= 1


def test_fc100_takes_whole_superclasses(cifar):
    sampler = FC100Sampler("test", seed=0, root=str(cifar), image_size=16, queries=2)
    superclasses = sorted(c for s in ("train", "val", "test") for c in read_class_list("fc100", s))
    fine = sorted(c for s in ("train", "val", "test") for c in read_class_list("cifar-fs", s))
    wanted = {superclasses.index(s) for s in read_class_list("fc100", "test")}
    assert sorted(sampler.classes) == sorted(name for i, name in enumerate(fine) if i // 5 in wanted)
    assert sampler.spec.num_classes == 20 and sampler.spec.input_shape == (3, 16, 16)
    assert sampler.sample(1).support_x.shape == (1, 5, 3, 16, 16)
    assert {len(FC100Sampler(s, root=str(cifar), queries=2).classes) for s in ("train", "val")} == {60, 20}


def test_a_published_md5_is_checked_when_no_sha256sums_is_given(cifar, tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100"
    folder.mkdir()
    shutil.copy(cifar / "cifar-100-binary.tar.gz", folder)
    with pytest.raises(DatasetError, match=r"cifar-100-binary.tar.gz has MD5 \w+, but the published .* MD5 03b5dce0"):
        CifarFSSampler("train", root=str(folder))
    md5 = hashlib.md5((folder / "cifar-100-binary.tar.gz").read_bytes()).hexdigest()
    published = layouts.Layout("as published", (layouts.Expected(("cifar-100-binary.tar.gz",), md5),))
    monkeypatch.setattr(CifarFSSampler, "info", dataclasses.replace(cifar100.CIFAR_FS, layouts=(published,)))
    assert CifarFSSampler("train", root=str(folder), queries=2).spec.num_classes == 64


def test_a_corrupt_archive_is_named_against_sha256sums(cifar, tmp_path):
    folder = tmp_path / "cifar-100"
    shutil.copytree(cifar, folder)
    archive = folder / "cifar-100-binary.tar.gz"
    payload = bytearray(archive.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    archive.write_bytes(bytes(payload))
    with pytest.raises(DatasetError, match=r"cifar-100-binary.tar.gz does not match its SHA-256 in .*SHA256SUMS"):
        FC100Sampler("train", root=str(folder))


def test_a_missing_archive_names_the_file_expected_and_the_source(tmp_path):
    with pytest.raises(DatasetError) as error:
        CifarFSSampler("train", root=str(tmp_path / "nowhere"))
    message = str(error.value)
    assert f"{tmp_path / 'nowhere' / 'cifar-100-binary.tar.gz'} not found" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "\n" not in message


def test_data_dir_is_the_default_root(cifar):
    sampler = CifarFSSampler("test", data_dir=str(cifar.parent), queries=2)
    assert sampler.spec.num_classes == 20


# The decoded cache


def test_a_split_is_decoded_once_then_memory_mapped(cifar, monkeypatch):
    first = CifarFSSampler("train", seed=0, root=str(cifar), queries=2)
    assert isinstance(first.dataset.images, np.memmap) and first.dataset.images.dtype == np.uint8
    monkeypatch.setattr(CifarFSSampler, "read_split", classmethod(lambda *a: pytest.fail("decoded again")))
    again = CifarFSSampler("train", seed=0, root=str(cifar), queries=2)
    np.testing.assert_array_equal(again.sample(2).support_x, first.sample(2).support_x)


def test_a_changed_archive_is_decoded_again(cifar, tmp_path):
    folder = tmp_path / "cifar-100"
    shutil.copytree(cifar, folder)
    CifarFSSampler("val", root=str(folder), queries=2)
    make.cifar100_binary(folder, per_class=(6, 1))  # new contents, new SHA256SUMS
    assert CifarFSSampler("val", root=str(folder), queries=2).dataset.counts == [7] * 16


def test_an_image_replaced_in_an_extracted_folder_is_decoded_again(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val", zipped=False)
    before = MiniImageNetSampler("val", root=str(folder), queries=2).dataset.examples(0, np.array([0]))
    first = sorted((folder / "images").iterdir())[0]
    first.write_bytes(make.encode(make.image(12345, (84, 84))))
    after = MiniImageNetSampler("val", root=str(folder), queries=2).dataset.examples(0, np.array([0]))
    assert not np.array_equal(before, after)
    np.testing.assert_allclose(after[0], decoded(first), atol=1 / 255)


def test_a_failed_decode_leaves_no_cache_entry(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val")
    rows = (folder / "val.csv").read_text().splitlines()
    (folder / "val.csv").write_text("\n".join([*rows, f"broken.jpg,{rows[-1].split(',')[1]}"]) + "\n")
    with zipfile.ZipFile(folder / "images.zip", "a") as archive:
        archive.writestr("images/broken.jpg", make.encode(make.image(1))[:100])  # truncated JPEG
    with pytest.raises(DatasetError, match=r"cannot read image .*images.zip:images/broken.jpg"):
        MiniImageNetSampler("val", root=str(folder), queries=2)
    leftovers = list((tmp_path / "cache").rglob("*.npy")) + list((tmp_path / "cache").rglob("*.tmp"))
    assert leftovers == []


def test_episodes_resume_from_the_sampler_state(cifar):
    sampler = CifarFSSampler("train", seed=3, root=str(cifar), queries=2)
    sampler.sample(2)
    state = sampler.state_dict()
    expected = sampler.sample(2)
    restored = CifarFSSampler("train", seed=99, root=str(cifar), queries=2)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.sample(2).query_x, expected.query_x)


def test_impossible_episodes_are_one_line_config_errors(cifar):
    with pytest.raises(ConfigError, match="ways=17 exceeds the 16 classes"):
        CifarFSSampler("val", root=str(cifar), ways=17, queries=2)
    with pytest.raises(ConfigError, match="smallest class"):
        CifarFSSampler("val", root=str(cifar), shots=5, queries=5)
    with pytest.raises(ConfigError, match="unknown split"):
        CifarFSSampler("holdout", root=str(cifar))


def extract(archive: tarfile.TarFile, folder: Path) -> None:
    """Write the archive's regular files under ``folder`` (what ``tar -x`` does for these archives)."""
    for member in archive:
        handle = archive.extractfile(member) if member.isfile() else None
        if handle is not None:
            target = folder / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(handle.read())


# mini-ImageNet


@pytest.mark.parametrize("zipped", [True, False], ids=["images.zip", "images/"])
def test_mini_imagenet_from_ravi_and_larochelle_files(tmp_path, zipped):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "test", zipped=zipped)
    sampler = MiniImageNetSampler("test", seed=0, root=str(folder), ways=5, shots=1, queries=2)
    assert sampler.classes == read_class_list("mini-imagenet", "test") and sampler.dataset.counts == [3] * 20
    assert sampler.spec.input_shape == (3, 84, 84)
    label = sampler.classes.index("n03544143")
    expected = decoded(make.encode(make.image(label * 10 + 2, (84, 84))))
    np.testing.assert_allclose(sampler.dataset.examples(label, np.array([2]))[0], expected, atol=1 / 255)


def test_mini_imagenet_needs_only_the_split_s_csv_and_names_the_missing_one(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val")
    MiniImageNetSampler("val", root=str(folder), queries=2)
    with pytest.raises(DatasetError, match=rf"{folder / 'test.csv'} not found .*github.com/twitter/meta-learning-lstm"):
        MiniImageNetSampler("test", root=str(folder), queries=2)


def test_a_csv_with_another_split_is_refused(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val")
    rows = (folder / "val.csv").read_text().replace("n01855672", "n01532829")
    (folder / "val.csv").write_text(rows)
    with pytest.raises(DatasetError, match=r"val.csv lists class n01532829, which is not in Ravi & Larochelle's split"):
        MiniImageNetSampler("val", root=str(folder), queries=2)


def test_an_image_missing_from_the_zip_is_named(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val")
    with open(folder / "val.csv", "a") as handle:
        handle.write("n0185567299999999.jpg,n01855672\n")
    with pytest.raises(DatasetError, match=r"images.zip has no image n0185567299999999.jpg \(listed in val.csv\)"):
        MiniImageNetSampler("val", root=str(folder), queries=2)


def test_mini_imagenet_from_imagenet_s_training_archive_and_the_csv_files(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val", per_class=3, images=False)
    make.imagenet_train_tar(folder, "val", per_class=5, dataset="mini-imagenet")
    from_tar = MiniImageNetSampler("val", seed=0, root=str(folder), queries=2)
    assert from_tar.classes == read_class_list("mini-imagenet", "val") and from_tar.dataset.counts == [3] * 16
    # the CSV's images 1, 2, 3 of a class are its images numbered 5, 31 and 112 (archive positions 3, 1, 4)
    label = from_tar.classes.index("n03075370")
    for row, k in enumerate((3, 1, 4)):
        expected = decoded(make.encode(make.image(label * 10 + k, (60 + k, 45))))
        np.testing.assert_allclose(from_tar.dataset.examples(label, np.array([row]))[0], expected, atol=1 / 255)
    archive = folder / "ILSVRC2012_img_train.tar"
    with tarfile.open(archive) as outer:
        for member in outer:
            handle = outer.extractfile(member)
            assert handle is not None
            with tarfile.open(fileobj=handle) as inner:
                extract(inner, folder / "train" / member.name.removesuffix(".tar"))
    archive.unlink()
    (folder / "SHA256SUMS").unlink()
    from_folder = MiniImageNetSampler("val", seed=0, root=str(folder), queries=2)
    np.testing.assert_array_equal(np.asarray(from_folder.dataset.images), np.asarray(from_tar.dataset.images))


def test_a_csv_row_beyond_the_class_s_imagenet_images_is_named(tmp_path):
    folder = make.mini_imagenet_ravi(tmp_path / "mini", "val", per_class=3, images=False)
    make.imagenet_train_tar(folder, "val", per_class=2, dataset="mini-imagenet")
    with pytest.raises(
        DatasetError, match=r"val.csv: n0185567200000003.jpg is image 3 of class n01855672, but .* has 2"
    ):
        MiniImageNetSampler("val", root=str(folder), queries=1)


def test_a_pickle_cache_needs_the_opt_in_and_is_converted_once(tmp_path, monkeypatch):
    folder = tmp_path / "mini"
    make.mini_imagenet_pickle(folder, "val")
    with pytest.raises(DatasetError, match=r"pickle cache .* tasks.allow_pickle=true .* images.zip or images/"):
        MiniImageNetSampler("val", root=str(folder), queries=2)
    sampler = MiniImageNetSampler("val", seed=1, root=str(folder), queries=2, allow_pickle=True)
    assert sampler.spec.num_classes == 16 and sampler.dataset.counts == [3] * 16
    label = sampler.classes.index("n09256479")
    expected = np.moveaxis(make.image(label * 10 + 1, (84, 84)), -1, 0).astype(np.float32) / 255
    np.testing.assert_array_equal(sampler.dataset.examples(label, np.array([1]))[0], expected)
    monkeypatch.setattr(mini_imagenet, "load_arrays", lambda *a: pytest.fail("unpickled again"))
    again = MiniImageNetSampler("val", seed=1, root=str(folder), queries=2, allow_pickle=True)
    np.testing.assert_array_equal(again.sample(1).support_x, sampler.sample(1).support_x)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_unpickler_accepts_numpy_arrays_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arrays = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": [np.float32(1.5), "text", b"raw"]}
    for protocol in (2, 4):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        loaded = safe_pickle.load_arrays(path)
        np.testing.assert_array_equal(loaded["a"], arrays["a"])
        assert loaded["b"][1:] == ["text", b"raw"] and loaded["b"][0] == np.float32(1.5)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"image_data": _Exploit()}))
    with pytest.raises(DatasetError, match=r"refusing to unpickle .*bad.pkl: (posix|os|nt)\.system is not a numpy"):
        safe_pickle.load_arrays(bad)
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_cache_with_code_is_refused_by_the_sampler(tmp_path):
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps({"image_data": _Exploit(), "class_dict": {}}))
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        MiniImageNetSampler("val", root=str(folder), allow_pickle=True)


# tiered-ImageNet


def test_tiered_imagenet_from_the_ilsvrc_training_archive(tmp_path):
    folder = tmp_path / "tiered"
    make.imagenet_train_tar(folder, "val")
    sampler = TieredImageNetSampler("val", seed=0, root=str(folder), queries=1)
    assert sampler.classes == read_class_list("tiered-imagenet", "val") and sampler.dataset.counts == [2] * 97
    label = sampler.classes.index("n04467665")
    expected = decoded(make.encode(make.image(label * 10 + 1, (61, 45))))
    np.testing.assert_allclose(sampler.dataset.examples(label, np.array([1]))[0], expected, atol=1 / 255)


def test_tiered_imagenet_from_the_extracted_folder(tmp_path, monkeypatch):
    folder = tmp_path / "tiered"
    tar = make.imagenet_train_tar(folder, "test")
    with tarfile.open(tar) as outer:
        for member in outer:
            handle = outer.extractfile(member)
            assert handle is not None
            with tarfile.open(fileobj=handle) as inner:
                extract(inner, folder / "train" / member.name.removesuffix(".tar"))
    tar.unlink()
    (folder / "SHA256SUMS").unlink()
    sampler = TieredImageNetSampler("test", root=str(folder), queries=1)
    assert sampler.spec.num_classes == 160 and sampler.dataset.counts == [2] * 160
    # the cache key covers the split's class folders only: other ImageNet classes may come and go
    (folder / "train" / "n99999999").mkdir()
    (folder / "train" / "n99999999" / "n99999999_1.JPEG").write_bytes(make.encode(make.image(0)))
    with monkeypatch.context() as patched:
        patched.setattr(TieredImageNetSampler, "read_split", classmethod(lambda *a: pytest.fail("decoded again")))
        assert TieredImageNetSampler("test", root=str(folder), queries=1).dataset.counts == [2] * 160
    wnid = read_class_list("tiered-imagenet", "test")[0]
    (folder / "train" / wnid / f"{wnid}_7.JPEG").write_bytes(make.encode(make.image(1)))
    assert TieredImageNetSampler("test", root=str(folder), queries=1).dataset.counts[0] == 3


def test_tiered_imagenet_from_ren_et_al_pickles(tmp_path):
    folder = make.tiered_imagenet_pickles(tmp_path / "tiered", "val")
    with pytest.raises(DatasetError, match="allow_pickle"):
        TieredImageNetSampler("val", root=str(folder), queries=1)
    sampler = TieredImageNetSampler("val", seed=0, root=str(folder), queries=1, allow_pickle=True)
    assert sampler.classes == read_class_list("tiered-imagenet", "val") and sampler.dataset.counts == [2] * 97
    expected = np.moveaxis(make.image(5 * 10 + 1, (84, 84)), -1, 0).astype(np.float32) / 255
    np.testing.assert_array_equal(sampler.dataset.examples(5, np.array([1]))[0], expected)


def test_an_archive_without_a_class_of_the_split_is_refused(tmp_path):
    folder = tmp_path / "tiered"
    make.imagenet_train_tar(folder, "val")
    with pytest.raises(DatasetError, match=r"ILSVRC2012_img_train.tar has no images of class n01530575"):
        TieredImageNetSampler("train", root=str(folder), queries=1)


# CUB-200-2011


def test_cub_from_the_archive_and_from_the_extracted_folder_agree(tmp_path):
    archive = make.cub_archive(tmp_path / "cub", splits=("test",))
    from_archive = CUBSampler("test", seed=0, root=str(archive.parent), queries=2)
    assert from_archive.classes == read_class_list("cub", "test") and from_archive.dataset.counts == [3] * 50
    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as opened:
        extract(opened, extracted)
    from_folder = CUBSampler("test", seed=0, root=str(extracted), queries=2)
    np.testing.assert_array_equal(np.asarray(from_folder.dataset.images), np.asarray(from_archive.dataset.images))
    label = from_archive.classes.index("200.Common_Yellowthroat")
    expected = decoded(make.encode(make.image(label * 10 + 2, (52, 40))))  # classes in the same order here
    np.testing.assert_allclose(from_archive.dataset.examples(label, np.array([2]))[0], expected, atol=1 / 255)


def test_cub_without_the_split_s_classes_names_the_first_missing(tmp_path):
    archive = make.cub_archive(tmp_path / "cub", splits=("val",))
    with pytest.raises(DatasetError, match=r"has no images of class 001.Black_footed_Albatross"):
        CUBSampler("train", root=str(archive.parent), queries=2)


# Status of every known dataset


def test_status_of_each_layout(cifar, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(cifar, root / "cifar-100")
    make.cub_archive(root / "cub-200-2011", splits=("val",))
    (root / "cub-200-2011" / "SHA256SUMS").write_text(f"{'0' * 64}  CUB_200_2011.tgz\n")
    make.mini_imagenet_pickle(root / "mini-imagenet", "train")
    states = {s.name: s for s in _states(root)}
    assert states["cifar-fs"].state == states["fc100"].state == layouts.VERIFIED
    assert states["cub"].state == layouts.MISMATCH and "CUB_200_2011.tgz does not match" in states["cub"].detail
    assert states["mini-imagenet"].state == layouts.MISSING  # val and test caches are absent
    assert "mini-imagenet-cache-val.pkl" in states["mini-imagenet"].detail
    for split in ("val", "test"):
        make.mini_imagenet_pickle(root / "mini-imagenet", split)
    assert {s.name: s.state for s in _states(root)}["mini-imagenet"] == layouts.FOUND
    assert {s.name: s.state for s in _states(root)}["omniglot"] == layouts.MISSING


def _states(root: Path):
    from metaplug.tasks.catalog import states

    return states(root)


def test_digests_are_remembered_by_size_and_time(cifar, monkeypatch):
    hashed: list[Path] = []
    assert layouts.status(cifar100.CIFAR_FS, cifar, hashed.append)[0] == layouts.VERIFIED
    assert hashed == [cifar / "cifar-100-binary.tar.gz"]
    monkeypatch.setattr(layouts.hashlib, "md5", lambda *a: pytest.fail("hashed again"))
    assert layouts.status(cifar100.FC100, cifar, hashed.append)[0] == layouts.VERIFIED and len(hashed) == 1


def test_benchmarks_register_as_task_samplers():
    from metaplug.plugins.discovery import registry

    names = set(registry().names("task-samplers"))
    assert {"mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub"} <= names
    assert benchmarks.BenchmarkSampler.Options is benchmarks.BenchmarkOptions


class TestCifarFSConformance(TaskSamplerConformance):
    """The conformance suite plugin authors run, on a benchmark sampler over a generated archive."""

    sampler = "cifar-fs"

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def archive(cls, tmp_path_factory):
        folder = tmp_path_factory.mktemp("conformance") / "cifar-100"
        make.cifar100_binary(folder)
        cls.options = {"root": str(folder), "ways": 5, "shots": 2, "queries": 3}


class TestMiniImageNetConformance(TaskSamplerConformance):
    sampler = "mini-imagenet"

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def archive(cls, tmp_path_factory):
        folder = tmp_path_factory.mktemp("conformance") / "mini-imagenet"
        for split in ("train", "val", "test"):
            make.mini_imagenet_pickle(folder, split, per_class=3)
        cls.options = {"root": str(folder), "ways": 5, "shots": 1, "queries": 2, "allow_pickle": True}


def test_pickles_of_another_split_are_refused(tmp_path):
    folder = make.tiered_imagenet_pickles(tmp_path / "tiered", "val")
    for part in ("images_png", "labels"):
        (folder / f"val_{part}.pkl").rename(folder / f"test_{part}.pkl")
    with pytest.raises(DatasetError, match=r"test_labels.pkl names class n\d+, which is not in Ren et al.'s test"):
        TieredImageNetSampler("test", root=str(folder), queries=1, allow_pickle=True)

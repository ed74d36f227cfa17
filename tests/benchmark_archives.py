"""Small archives in the real formats of the standard benchmarks: a few generated images
per class, every class of the split files, so the real loading code runs in seconds."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from metaplug.tasks.layouts import read_class_groups, read_class_list

SPLITS = ("train", "val", "test")


def image(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    """A uint8 ``(height, width, 3)`` image whose colour depends on ``seed``: a smooth gradient
    (compresses well) tinted per class."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0.5, 1, height)[:, None, None]
    return (ramp * rng.uniform(40, 255, size=3)).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_sha256sums(folder: Path, *names: str) -> None:
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def cifar100_binary(folder: Path, per_class: tuple[int, int] = (5, 1)) -> Path:
    """``cifar-100-binary.tar.gz``: every CIFAR-100 class with ``per_class`` (train, test) images.

    Fine names are the CIFAR-FS classes in CIFAR's alphabetical order; coarse labels put
    five consecutive fine classes under each FC100 superclass (sorted), as the real file
    groups five classes per superclass."""
    fine = sorted(c for s in SPLITS for c in read_class_list("cifar-fs", s))
    coarse = sorted(c for s in SPLITS for c in read_class_list("fc100", s))
    parts = {}
    for part, count in zip(("train.bin", "test.bin"), per_class, strict=True):
        records = []
        for label in range(100):
            for k in range(count):
                pixels = np.moveaxis(image(label * 10 + k, (32, 32)), -1, 0).reshape(-1)
                records.append(np.concatenate([[label // 5, label], pixels]).astype(np.uint8))
        parts[part] = np.stack(records).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-100-binary.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for part, data in parts.items():
            add_bytes(archive, f"cifar-100-binary/{part}", data)
        add_bytes(archive, "cifar-100-binary/fine_label_names.txt", ("\n".join(fine) + "\n").encode())
        add_bytes(archive, "cifar-100-binary/coarse_label_names.txt", ("\n".join(coarse) + "\n").encode())
    write_sha256sums(folder, path.name)
    return path


def cub_archive(folder: Path, per_class: int = 3, splits: tuple[str, ...] = SPLITS) -> Path:
    """``CUB_200_2011.tgz`` with ``per_class`` JPEGs in each class folder of ``splits``
    (plus the metadata file the real archive has at its top)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "CUB_200_2011.tgz"
    classes = sorted(c for s in splits for c in read_class_list("cub", s))
    with tarfile.open(path, "w:gz") as archive:
        add_bytes(archive, "attributes.txt", b"1 has_bill_shape::curved_(up_or_down)\n")
        for index, name in enumerate(classes):
            for k in range(per_class):
                data = encode(image(index * 10 + k, (50 + k, 40)))
                add_bytes(archive, f"CUB_200_2011/images/{name}/{name.split('.')[1]}_{k:04d}_{index}.jpg", data)
    write_sha256sums(folder, path.name)
    return path


def mini_imagenet_ravi(folder: Path, split: str, per_class: int = 3, zipped: bool = True, images: bool = True) -> Path:
    """Ravi & Larochelle's layout for ``split``: ``<split>.csv`` and ``images.zip`` (or ``images/``;
    neither without ``images``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, files = ["filename,label"], {}
    for c, wnid in enumerate(read_class_list("mini-imagenet", split)):
        for k in range(per_class):
            name = f"{wnid}{k + 1:08d}.jpg"
            rows.append(f"{name},{wnid}")
            files[name] = encode(image(c * 10 + k, (84, 84)))
    (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    if not images:
        return folder
    if zipped:
        with zipfile.ZipFile(folder / "images.zip", "w") as archive:
            for name, data in files.items():
                archive.writestr(f"images/{name}", data)
    else:
        (folder / "images").mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / "images" / name).write_bytes(data)
    return folder


def mini_imagenet_pickle(folder: Path, split: str, per_class: int = 3) -> Path:
    """``mini-imagenet-cache-<split>.pkl``: ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": ...}``."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = read_class_list("mini-imagenet", split)
    data = np.stack([image(c * 10 + k, (84, 84)) for c in range(len(classes)) for k in range(per_class)])
    class_dict = {wnid: list(range(c * per_class, (c + 1) * per_class)) for c, wnid in enumerate(classes)}
    path = folder / f"mini-imagenet-cache-{split}.pkl"
    path.write_bytes(pickle.dumps({"image_data": data, "class_dict": class_dict}, protocol=4))
    return path


IMAGENET_NUMBERS = (1207, 31, 980, 5, 112)
"""Numbers of a class's images in the generated ImageNet archive, in archive order (not sorted)."""


def imagenet_train_tar(folder: Path, split: str, per_class: int = 2, dataset: str = "tiered-imagenet") -> Path:
    """``ILSVRC2012_img_train.tar``: one ``<wnid>.tar`` of JPEGs per class of ``dataset``'s ``split``;
    image ``k`` of class ``c`` is ``<wnid>_<IMAGENET_NUMBERS[k]>.JPEG`` drawn from seed ``c * 10 + k``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ILSVRC2012_img_train.tar"
    with tarfile.open(path, "w") as outer:
        for c, wnid in enumerate(read_class_list(dataset, split)):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for k in range(per_class):
                    data = encode(image(c * 10 + k, (60 + k, 45)))
                    add_bytes(inner, f"{wnid}_{IMAGENET_NUMBERS[k]}.JPEG", data)
            add_bytes(outer, f"{wnid}.tar", buffer.getvalue())
    write_sha256sums(folder, path.name)
    return path


def tiered_imagenet_pickles(folder: Path, split: str, per_class: int = 2) -> Path:
    """Ren et al.'s ``<split>_images_png.pkl`` and ``<split>_labels.pkl`` (protocol 2, as from Python 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = read_class_groups("tiered-imagenet", split)
    classes, categories = list(groups), sorted(set(groups.values()))
    pngs, specific, general = [], [], []
    for c, wnid in enumerate(classes):
        for k in range(per_class):
            pngs.append(np.frombuffer(encode(image(c * 10 + k, (84, 84)), "PNG"), dtype=np.uint8))
            specific.append(c)
            general.append(categories.index(groups[wnid]))
    labels = {
        "label_specific": np.array(specific),
        "label_general": np.array(general),
        "label_specific_str": classes,
        "label_general_str": categories,
    }
    (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
    (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
    return folder

"""Inputs that used to end in an internal error (or exit 0): each is one clear line and a non-zero exit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from doubles import DOUBLES

from metaplug.errors import ConfigError, DatasetError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import config, runner
from metaplug.experiment.files import npz_bytes
from metaplug.experiment.memory import check_fits_in_memory
from metaplug.tasks import omniglot

NUMPY = ["--backend", "numpy", "--algorithm", "linear-maml", "--meta-batch-size", "4", "--val-every", "0"]
NUMPY += ["--test-tasks", "4", "--quiet"]


def metaplug(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    paths = [str(DOUBLES), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONWARNINGS": "ignore::RuntimeWarning"}
    command = [sys.executable, "-m", "metaplug", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("errors") / "run"
    done = metaplug("train", *NUMPY, "--iterations", "4", "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    return run


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--seed", str(2**64)], ["seed must be in [0, 18446744073709551615], got 18446744073709551616"]),
        (["--meta-batch-size", "100000000000"], ["meta-batch needs at least", "TiB", "lower --meta-batch-size"]),
        (["--queries", "100000000000"], ["queries 100000000000", "more than the", "of memory of this machine"]),
        (["--set", "tasks.amplitude=[1,2,3]"], ["tasks.amplitude must have 2 entries, got [1, 2, 3]"]),
        (["--set", 'tasks.amplitude=["a","b"]'], ["tasks.amplitude must be a number, got 'a'"]),
        (["--set", "tasks.amplitude=[1,inf]"], ["tasks.amplitude must be finite, got inf"]),
    ],
)
def test_bad_training_input_is_refused_before_anything_is_written(tmp_path, args, fragments):
    assert_one_line_error(metaplug("train", *NUMPY, "--iterations", "3", *args, cwd=tmp_path), *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_memory_check_names_the_sizes(double):
    raw = config.defaults()
    raw.update(backend="numpy", algorithm={"name": "linear-maml"})
    raw["train"]["meta_batch_size"] = 1000
    from metaplug.experiment.components import build, check

    experiment = build(check(config.from_dict(raw)))
    check_fits_in_memory(experiment, available=10**9)  # 1000 tasks of 20 points: a few hundred kB
    with pytest.raises(ConfigError, match=r"needs at least 156\.2 KiB .* more than the 1000 bytes"):
        check_fits_in_memory(experiment, available=1000)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["list", "algorithms", "--backend", "jax"], ["unknown backend 'jax'", "Installed backends:", "numpy"]),
        (["evaluate", "RUN", "--seed", str(2**64)], ["--seed", "0<=x<=18446744073709551615"]),
        (["plot", "RUN", "--seed", "-1"], ["--seed"]),
    ],
)
def test_bad_command_options_exit_non_zero(trained, args, fragments):
    args = [str(trained) if a == "RUN" else a for a in args]
    assert_one_line_error(metaplug(*args), *fragments)


def test_bench_with_an_unknown_batching_mode_exits_non_zero():
    done = metaplug("bench", "--batching", "weird", "--backend", "torch", "--workload", "sinusoid-maml")
    assert_one_line_error(done, "--batching 'weird' is not a batching mode", "torch: auto, vectorized, loop")


def test_evaluate_of_a_run_with_nan_weights_exits_non_zero(trained, tmp_path):
    run = tmp_path / "nan"
    run.mkdir()
    (run / "config.toml").write_bytes((trained / "config.toml").read_bytes())
    saved = checkpoints.load(trained / "checkpoint")
    poisoned = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in saved.arrays.items()}
    checkpoints.save(run / "checkpoint", checkpoints.Checkpoint(saved.step, poisoned, saved.record))
    assert_one_line_error(metaplug("evaluate", str(run)), "holds non-finite weights", "NaN")
    assert not (run / "evaluation.json").exists()


def test_an_overflowing_learning_rate_is_a_divergence_not_an_internal_error(tmp_path):
    pytest.importorskip("torch")
    args = ["--backend", "torch", "--meta-batch-size", "2", "--val-every", "0", "--test-tasks", "2", "--quiet"]
    done = metaplug("train", *args, "--iterations", "2", "--lr", "1e300", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(done, "training overflowed at step 1", "optimizer.lr 1e+300", "smaller learning rate")
    assert not (tmp_path / "r").exists()


# -- new-plugin and install ----------------------------------------------------


def test_new_plugin_into_a_folder_it_cannot_write_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(metaplug("new-plugin", "foo", "--dir", str(tmp_path / "file" / "x")), "Not a directory")
    if Path("/proc/self").is_dir():
        assert_one_line_error(metaplug("new-plugin", "foo", "--dir", "/proc/x"), "cannot write the plugin to /proc/x")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        assert_one_line_error(metaplug("new-plugin", "foo", "--dir", str(tmp_path / "ro" / "x")), "Permission denied")


def test_install_of_a_folder_with_a_binary_pyproject_is_one_line(tmp_path):
    (tmp_path / "pyproject.toml").write_bytes(bytes(range(256)))
    assert_one_line_error(metaplug("install", str(tmp_path)), "pyproject.toml is not valid TOML")


# -- damaged checkpoints ---------------------------------------------------------


def write_checkpoint_files(folder: Path, weights: bytes, record: dict, **pointer: object) -> None:
    """A checkpoint written by hand: consistent digests around whatever content a test needs."""
    folder.mkdir(parents=True, exist_ok=True)
    record_bytes = json.dumps({"format": 1, **record}).encode()
    (folder / "step-000004.npz").write_bytes(weights)
    (folder / "step-000004.json").write_bytes(record_bytes)
    fields = {
        "format": 1,
        "step": 4,
        "arrays": "step-000004.npz",
        "arrays_sha256": hashlib.sha256(weights).hexdigest(),
        "record": "step-000004.json",
        "record_sha256": hashlib.sha256(record_bytes).hexdigest(),
    }
    fields.update(pointer)
    (folder / "latest.json").write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))


@pytest.mark.parametrize(
    "pointer, message",
    [
        ({"arrays": 5}, "arrays must be a str, got 5"),
        ({"record_sha256": None}, "no 'record_sha256'"),
        ({"step": "4"}, "step must be a int"),
        ({"arrays": ["a"]}, "arrays must be a str"),
    ],
)
def test_a_pointer_with_wrong_types_or_missing_keys_is_a_checkpoint_error(tmp_path, pointer, message):
    write_checkpoint_files(tmp_path, npz_bytes({"w": np.zeros(3)}), {"step": 4}, **pointer)
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.load(tmp_path)


def test_an_array_header_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
        archive.writestr("w.npy", header.getvalue() + b"\0" * 8)
    write_checkpoint_files(tmp_path, buffer.getvalue(), {"step": 4})
    with pytest.raises(checkpoints.CheckpointError, match=r"declares shape \(1000000000000,\)"):
        checkpoints.load(tmp_path)


@pytest.mark.parametrize(
    "samplers",
    [
        {"train": {"rng": {"bit_generator": "MT19937", "state": 3}}, "val": None},
        {"train": {"rng": "not a state"}, "val": None},
        {"train": {}, "val": None},
        "nothing",
    ],
)
def test_a_bad_sampler_state_is_a_checkpoint_error_on_resume(trained, tmp_path, samplers):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_bytes((trained / "config.toml").read_bytes())
    saved = checkpoints.load(trained / "checkpoint")
    record = {**saved.record, "samplers": samplers}
    checkpoints.save(run / "checkpoint", checkpoints.Checkpoint(saved.step, saved.arrays, record))
    assert_one_line_error(
        metaplug("train", "--resume", str(run), "--iterations", "8"), "invalid sampler or progress state"
    )


# -- dataset files ----------------------------------------------------------------


def test_a_negative_split_seed_is_refused():
    with pytest.raises(ConfigError, match="split_seed must be at least 0, got -1"):
        omniglot.OmniglotSampler("train", split_seed=-1)


def fake_archives(folder: Path, corrupt: bool) -> None:
    """Two small Omniglot-named archives (one PNG each), the first with a damaged deflate
    stream when ``corrupt``, and a ``SHA256SUMS`` that matches them as they are."""
    from PIL import Image

    folder.mkdir()
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (105, 105), dtype=np.uint8)).save(image, "PNG")
    sums = []
    for stem in omniglot.ARCHIVES:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{stem}/Alphabet/character01/0001_01.png", image.getvalue())
        data = bytearray(buffer.getvalue())
        if corrupt and stem == "images_background":
            start = 30 + len(f"{stem}/Alphabet/character01/0001_01.png")  # the member's compressed bytes
            data[start : start + 40] = b"\xff" * 40
        (folder / f"{stem}.zip").write_bytes(bytes(data))
        sums.append(f"{hashlib.sha256(bytes(data)).hexdigest()}  {stem}.zip")
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def test_a_corrupt_archive_member_with_matching_checksums_is_a_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))
    fake_archives(tmp_path / "omniglot", corrupt=True)
    with pytest.raises(DatasetError, match="images_background.zip is corrupt"):
        omniglot.load_images(tmp_path / "omniglot")


def test_a_binary_checksum_file_is_a_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))
    fake_archives(tmp_path / "omniglot", corrupt=False)
    (tmp_path / "omniglot" / "SHA256SUMS").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DatasetError, match="SHA256SUMS is not a text file"):
        omniglot.load_images(tmp_path / "omniglot")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_dataset_files_are_dataset_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))
    fake_archives(tmp_path / "omniglot", corrupt=False)
    (tmp_path / "omniglot" / "images_evaluation.zip").chmod(0)
    with pytest.raises(DatasetError, match="cannot read .*images_evaluation.zip"):
        omniglot.load_images(tmp_path / "omniglot")
    (tmp_path / "omniglot" / "SHA256SUMS").chmod(0)
    with pytest.raises(DatasetError, match="cannot read .*SHA256SUMS"):
        omniglot.load_images(tmp_path / "omniglot")


def test_unreadable_dataset_files_are_dataset_errors_as_root_too(tmp_path, monkeypatch):
    """What a permission error looks like where the tests run as root: a read that fails."""
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))
    fake_archives(tmp_path / "omniglot", corrupt=False)
    real_open = open

    def failing_open(path, *args, **kwargs):
        if str(path).endswith("images_evaluation.zip"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(DatasetError, match="cannot read .*images_evaluation.zip: Permission denied"):
        omniglot.load_images(tmp_path / "omniglot")


DATA = Path(os.environ.get("METAPLUG_DATA_DIR", "")) / "omniglot"


@pytest.mark.skipif(not (DATA / "images_background.zip").is_file(), reason="real Omniglot not found")
def test_more_ways_than_the_test_split_has_classes_fails_before_training(tmp_path):
    pytest.importorskip("torch")
    raw = config.defaults()
    raw.update(backend="torch", tasks={"name": "omniglot", "ways": 500, "rotations": False})
    raw["train"].update(iterations=1, meta_batch_size=1, val_every=0)
    with pytest.raises(ConfigError, match="test split: ways=500 exceeds the 423 classes"):
        runner.start(config.from_dict(raw), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()

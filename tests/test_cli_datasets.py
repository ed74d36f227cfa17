"""``metaplug datasets`` and the benchmark samplers through the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import benchmark_archives as make
import pytest
from cli_assertions import assert_one_line_error


def metaplug(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METAPLUG_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make.cifar100_binary(root / "cifar-100")
    return root


def test_datasets_lists_every_known_dataset_with_its_state(data, tmp_path):
    done = metaplug("datasets", "--data-dir", str(data), cache=tmp_path)
    assert done.returncode == 0, done.stderr
    table = {line.split()[0]: line for line in done.stdout.splitlines()[2:8]}
    assert list(table) == ["omniglot", "mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub"]
    assert "found and verified" in table["cifar-fs"] and "found and verified" in table["fc100"]
    assert "missing" in table["cub"] and str(data / "cub-200-2011") in table["cub"]
    assert f"put in {data / 'cub-200-2011'}: CUB_200_2011.tgz or CUB_200_2011/" in done.stdout
    assert "https://data.caltech.edu/records/65de6-vp158" in done.stdout
    listed = json.loads(metaplug("datasets", "--data-dir", str(data), "--json", cache=tmp_path).stdout)
    assert {d["name"]: d["state"] for d in listed}["mini-imagenet"] == "missing"
    assert {"name", "state", "folder", "detail", "expected", "source", "licence"} <= set(listed[0])


def test_datasets_reports_a_checksum_mismatch(data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    archive = root / "cifar-100" / "cifar-100-binary.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-10])
    done = metaplug("datasets", "--data-dir", str(root), cache=tmp_path / "cache")
    assert done.returncode == 0
    row = next(line for line in done.stdout.splitlines() if line.startswith("cifar-fs"))
    assert "checksum mismatch" in row
    assert f"{archive} does not match its SHA-256 in {archive.parent / 'SHA256SUMS'}" in done.stdout


def test_train_reports_a_missing_dataset_in_one_line(tmp_path):
    done = metaplug("train", "--tasks", "cub", "--algorithm", "protonet", "--data-dir", str(tmp_path), cache=tmp_path)
    assert_one_line_error(done, str(tmp_path / "cub-200-2011" / "CUB_200_2011.tgz"), "not found", "data.caltech.edu")


def test_train_protonet_on_cifar_fs_from_the_binary_archive(data, tmp_path):
    pytest.importorskip("metaplug_torch")
    run = tmp_path / "run"
    args = ["--tasks", "cifar-fs", "--algorithm", "protonet", "--set", f"tasks.root={data / 'cifar-100'}"]
    args += ["--set", "model.filters=8", "--ways", "5", "--shots", "1", "--queries", "2", "--iterations", "3"]
    args += ["--val-every", "0", "--test-tasks", "4", "--meta-batch-size", "2", "--run-dir", str(run), "--quiet"]
    done = metaplug("train", *args, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 3 and results["test"]["accuracy"]["n"] == 4
    assert 'name = "cifar-fs"' in (run / "config.toml").read_text()

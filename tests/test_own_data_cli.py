"""``metaplug train`` on the user's own folder of images and own table, on both backends."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from own_data import make_image_folder, make_regression_csv

from metaplug.experiment import checkpoint as checkpoints

pytest.importorskip("metaplug_torch")

BACKENDS = [
    "torch",
    pytest.param(
        "tensorflow",
        marks=[
            pytest.mark.slow,  # TensorFlow's start-up: 12-16 s a run on two cores
            pytest.mark.skipif(
                importlib.util.find_spec("metaplug_tensorflow") is None, reason="no metaplug-tensorflow"
            ),
        ],
    ),
]


def metaplug(*args, cache, cwd=None):
    env = {**os.environ, "METAPLUG_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env, cwd=cwd)


def image_job(root, run, *extra):
    return [
        "train", "--tasks", "image-folder", "--set", f"tasks.root={root}", "--set", "tasks.image_size=16",
        "--ways", "2", "--shots", "1", "--queries", "2", "--meta-batch-size", "2", "--val-every", "0",
        "--run-dir", str(run), "--quiet", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_trains_on_a_folder_of_images(tmp_path, backend):
    root = make_image_folder(tmp_path / "images", classes=10, per_class=5)
    done = metaplug(*image_job(root, tmp_path / "run", "--backend", backend, "--iterations", "2", "--test-tasks", "4"),
                    cache=tmp_path / "cache")  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["problem"] == "classification" and results["test"]["episodes"] == 4
    assert 0 <= results["test"]["accuracy"]["mean"] <= 1
    assert f'root = "{root}"' in (tmp_path / "run" / "config.toml").read_text()
    if backend == "torch":  # your own support set, read as the sampler reads its images
        for name in ("class03", "class07"):
            shutil.copytree(root / name, tmp_path / "support" / name)
        done = metaplug("predict", str(tmp_path / "run"), "--support", str(tmp_path / "support"), "--query",
                        str(root / "class03" / "004.png"), "--json", cache=tmp_path / "cache")  # fmt: skip
        assert done.returncode == 0, done.stderr
        (row,) = json.loads(done.stdout)
        assert row["prediction"] in ("class03", "class07")
        assert row["p(class03)"] + row["p(class07)"] == pytest.approx(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maml_on_a_table_of_regression_tasks(tmp_path, backend):
    table = make_regression_csv(tmp_path / "sites.csv")
    done = metaplug(
        "train", "--backend", backend, "--tasks", "table", "--set", f"tasks.path={table}", "--shots", "5",
        "--queries", "5", "--meta-batch-size", "4", "--iterations", "3", "--val-every", "2", "--val-tasks", "4",
        "--test-tasks", "4", "--run-dir", str(tmp_path / "run"), "--quiet", cache=tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["problem"] == "regression" and np.isfinite(results["test"]["loss"]["mean"])


def test_a_relative_data_path_is_saved_absolute_so_resume_works_from_elsewhere(tmp_path):
    data, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    make_regression_csv(data / "sites.csv")
    run = tmp_path / "run"
    done = metaplug(
        "train", "--backend", "torch", "--tasks", "table", "--set", "tasks.path=sites.csv", "--shots", "5",
        "--queries", "5", "--meta-batch-size", "2", "--iterations", "1", "--val-every", "0", "--test-tasks", "0",
        "--run-dir", str(run), "--quiet", cache=tmp_path / "cache", cwd=data,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f'path = "{data / "sites.csv"}"' in (run / "config.toml").read_text()
    done = metaplug(
        "train", "--resume", str(run), "--iterations", "2", "--quiet", cache=tmp_path / "cache", cwd=elsewhere
    )
    assert done.returncode == 0, done.stderr
    assert checkpoints.load(run / "checkpoint").step == 2


def test_augmented_prefetched_training_resumes_bitwise(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=6, per_class=5)
    common = ["--backend", "torch", "--test-tasks", "0", "--log-every", "1", "--checkpoint-every", "2",
              "--set", 'tasks.augment=["crop", "flip", "jitter", "rotate"]']  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cache = tmp_path / "cache"
    done = metaplug(*image_job(root, straight, *common, "--iterations", "4", "--set", "train.prefetch=0"), cache=cache)
    assert done.returncode == 0, done.stderr
    done = metaplug(
        *image_job(root, resumed, *common, "--iterations", "2", "--set", "train.data_workers=2"), cache=cache
    )
    assert done.returncode == 0, done.stderr
    done = metaplug("train", "--resume", str(resumed), "--iterations", "4", "--quiet", cache=cache)
    assert done.returncode == 0, done.stderr
    a, b = checkpoints.load(straight / "checkpoint"), checkpoints.load(resumed / "checkpoint")
    assert a.step == b.step == 4 and a.record["samplers"]["train"] == b.record["samplers"]["train"]
    assert set(a.arrays) == set(b.arrays)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]

    assert losses(straight) == losses(resumed) and len(losses(straight)) == 4


def test_bad_data_is_one_line_on_the_command_line(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=6, per_class=5, formats=("png",))
    (root / "class03" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    done = metaplug(*image_job(root, tmp_path / "run", "--iterations", "1"), cache=tmp_path / "cache")
    assert_one_line_error(done, "cannot read image", str(root / "class03" / "002.png"))
    assert not (tmp_path / "cache" / "decoded").exists() or not list((tmp_path / "cache" / "decoded").iterdir())
    table = tmp_path / "t.csv"
    table.write_text("task,x,y\n" + "a,1,2\n" * 12 + "b,1,2\nb,n/a,2\n")
    done = metaplug("train", "--tasks", "table", "--set", f"tasks.path={table}", "--iterations", "1",
                    cache=tmp_path / "cache")  # fmt: skip
    assert_one_line_error(done, "t.csv, line 15, column 'x': 'n/a' is not a number")

"""One process over several devices (TensorFlow's ``MirroredStrategy``), tested on the CPU
split into logical devices: the same meta-parameters and evaluation as one device, and the
combinations it cannot run refused with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_worker
import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from workers_env import ROOT

from metaplug.errors import ConfigError

TENSORFLOW = [name for name in distributed_worker.ALGORITHMS if name != "matchingnet"]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    for name in ("TF_CONFIG", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize(
    "names",
    [
        ["maml", "protonet"],
        pytest.param(TENSORFLOW, marks=pytest.mark.slow, id="all"),
    ],
)
def test_two_devices_train_and_evaluate_as_one_device(names: list[str], tmp_path: Path) -> None:
    """A process whose CPU is split into two devices (set before TensorFlow starts, hence a
    process of its own) trains each meta-batch split over them: step after step the
    meta-parameters equal one device's to float tolerance, and so do the per-task results of
    an evaluation whose episodes do not split evenly."""
    pytest.importorskip("metaplug_tensorflow")
    out = tmp_path / "devices.npz"
    done = subprocess.run(
        [sys.executable, distributed_worker.__file__, "devices=2:tensorflow", str(out), *names],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mirrored = dict(np.load(out))
    single = distributed_worker.run("tensorflow", names=names)
    assert sorted(mirrored) == sorted(single)
    for key, expected in single.items():
        np.testing.assert_allclose(mirrored[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    assert len(single["maml/eval/accuracy"]) == distributed_worker.EVAL_TASKS


def test_devices_that_cannot_be_used_are_one_line_errors(tmp_path, monkeypatch, capsys) -> None:
    """Checked before anything is built or launched (run in this process)."""
    pytest.importorskip("torch")
    pytest.importorskip("metaplug_tensorflow")
    from metaplug.cli import main
    from metaplug.experiment import scaling

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scaling, "CLUSTER_FLAGS", [])
    monkeypatch.delenv("TF_CONFIG", raising=False)

    def train(*args: str) -> subprocess.CompletedProcess:
        with pytest.raises(SystemExit) as stopped:
            main(["train", "--iterations", "2", "--meta-batch-size", "4", *args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, int(stopped.value.code or 0), captured.out, captured.err)

    assert_one_line_error(
        train("--backend", "torch", "--devices", "2"),
        "backend 'torch' drives one device per process (distributed.devices = 2)",
        "--nproc 2",
    )
    assert_one_line_error(
        train("--backend", "tensorflow", "--devices", "2", "--nproc", "2"),
        "distributed.devices = 2 with 2 workers",
        "not both",
    )
    assert_one_line_error(
        train("--backend", "tensorflow", "--devices", "3"), "meta_batch_size 4 cannot be split evenly over 3 devices"
    )
    assert_one_line_error(train("--backend", "tensorflow", "--devices", "0"), "distributed.devices", "at least 1")
    assert not list(tmp_path.iterdir())


def test_devices_tensorflow_cannot_mirror_are_refused() -> None:
    """A numbered device, missing GPUs, a CPU split after TensorFlow started, Reptile's
    task-to-task inner Adam and weights made outside the strategy's scope (your own Keras
    model): each one line naming the way out."""
    pytest.importorskip("metaplug_tensorflow")
    import metaplug
    from metaplug_tensorflow._tf import tf
    from metaplug_tensorflow.mirrored import Replicas, choose_devices, split_cpu

    with pytest.raises(ConfigError, match=r"^device 'gpu:1' is one device, but devices = 2: give device 'gpu'"):
        choose_devices("gpu:1", 2)
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(ConfigError, match=r"^devices = 2 but TensorFlow sees 0 GPU\(s\); use device 'cpu'"):
            choose_devices("gpu", 2)
    running = len(tf.config.list_logical_devices("CPU"))  # starts TensorFlow's runtime
    with pytest.raises(ConfigError, match=rf"already started with {running} CPU device\(s\).*in a new process$"):
        split_cpu(running + 1)

    replicas = Replicas(["/cpu:0"])
    spec = distributed_worker.spec()
    reptile = metaplug.algorithm("reptile", spec=spec, backend="tensorflow", device="cpu", inner_optimizer="adam")
    with pytest.raises(ConfigError, match=r"^reptile with inner_optimizer 'adam' carries the inner Adam state"):
        replicas.adopt(reptile)
    keras = tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(3)])
    learner = metaplug.algorithm("maml", spec=spec, backend="tensorflow", device="cpu", model=keras)
    with pytest.raises(ConfigError, match=r"^maml: weight .* was created outside the MirroredStrategy's scope"):
        replicas.adopt(learner)


@pytest.mark.slow
def test_train_on_two_devices_matches_one_and_resumes_bitwise(tmp_path: Path) -> None:
    """``metaplug train --devices 2`` end to end: ``config.toml`` records the devices, the
    scores equal one device's, a run resumed on two devices ends bit for bit where an
    uninterrupted one does, and ``metaplug evaluate`` scores it (on one device)."""
    pytest.importorskip("metaplug_tensorflow")
    common = ["--backend", "tensorflow", "--device", "cpu", "--meta-batch-size", "4", "--val-every", "2"]
    common += ["--val-tasks", "3", "--test-tasks", "5", "--log-every", "2", "-q"]

    def metaplug(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=environment(), cwd=ROOT
        )
        assert done.returncode == 0, done.stderr[-3000:]

    metaplug("train", *common, "--devices", "2", "--iterations", "4", "--run-dir", str(tmp_path / "two"))
    assert "devices = 2" in (tmp_path / "two" / "config.toml").read_text()
    metaplug("train", "--resume", str(tmp_path / "two"), "--iterations", "8", "-q")
    metaplug("train", *common, "--devices", "2", "--iterations", "8", "--run-dir", str(tmp_path / "straight"))
    metaplug("train", *common, "--devices", "1", "--iterations", "8", "--run-dir", str(tmp_path / "one"))

    from metaplug.experiment import checkpoint as checkpoints

    resumed = checkpoints.load(tmp_path / "two" / "checkpoint").arrays
    straight = checkpoints.load(tmp_path / "straight" / "checkpoint").arrays
    one = checkpoints.load(tmp_path / "one" / "checkpoint").arrays
    assert sorted(resumed) == sorted(straight) == sorted(one)
    for name, array in straight.items():
        np.testing.assert_array_equal(resumed[name], array, err_msg=name)
        np.testing.assert_allclose(one[name], array, rtol=1e-5, atol=1e-6, err_msg=name)
    metaplug("evaluate", str(tmp_path / "two"), "--episodes", "3")  # on one device
    scores = [json.loads((tmp_path / run / "results.json").read_text())["test"] for run in ("straight", "one")]
    for metric in ("loss", "loss_before"):
        assert scores[0][metric]["n"] == scores[1][metric]["n"] == 5
        assert scores[0][metric]["mean"] == pytest.approx(scores[1][metric]["mean"], rel=1e-5)


def test_a_device_slice_draws_the_randomness_of_its_tasks_global_places() -> None:
    """ResNet-12's DropBlock draws by a task's place in the meta-batch: a device whose slice
    starts at task 2 numbers its tasks 2, 3, ... as one device does."""
    pytest.importorskip("metaplug_tensorflow")
    from metaplug_tensorflow.models import meta_training, task_forwards, training_forward

    for first, local, expected in [(0, 1, 1), (2, 0, 2), (2, 1, 3)]:
        with meta_training(0, 0, first_task=first), task_forwards(local):
            found = training_forward()
            assert found is not None and found[1] == expected and found[2] == 0
    with meta_training(0, 0, first_task=2):  # a forward outside the task loop starts at the slice's first task
        found = training_forward()
        assert found is not None and found[1] == 2

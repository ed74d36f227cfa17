"""Transfer learning end to end on the real backends: pre-train with ProtoNets on Omniglot,
then meta-train MAML and fine-tune from that run (``--init-weights RUN_DIR``), with frozen
features and the l2-sp regulariser; weights moving between backends through a run
directory and a safetensors file. Skipped without the plugins (or Omniglot's data)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

pytest.importorskip("metaplug_torch")
if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed", allow_module_level=True)

from metaplug.errors import DatasetError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import config, runner
from metaplug.experiment.components import build, check

OMNIGLOT = {"name": "omniglot", "ways": 5, "shots": 1, "queries": 2}
TRAIN = {"iterations": 3, "meta_batch_size": 2, "val_every": 0, "test_tasks": 4, "log_every": 1}


def make_config(algorithm: dict, tasks: dict = OMNIGLOT, backend: str = "torch", **model) -> config.ExperimentConfig:
    raw = config.defaults()
    raw.update(backend=backend, device="cpu")
    raw["tasks"] = dict(tasks)
    raw["algorithm"] = dict(algorithm)
    raw["model"] = {**raw["model"], "filters": 8, **model} if tasks is OMNIGLOT else {**raw["model"], **model}
    raw["train"].update(TRAIN)
    return config.from_dict(raw)


def model_arrays(run: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in checkpoints.load(run / "checkpoint").arrays.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("transfer") / "protonet"
    try:
        runner.start(make_config({"name": "protonet"}), run, progress=False).run()
    except DatasetError:
        pytest.skip("Omniglot data not available")
    return run


def test_maml_meta_trains_from_a_protonet_run(protonet_run, tmp_path):
    pretrained = model_arrays(protonet_run)
    cfg = check(make_config({"name": "maml", "inner_lr": 0.4}, init_weights=str(protonet_run)))
    experiment = build(cfg)
    report = experiment.init_weights
    assert report is not None and report.complete and len(report.loaded) == 18  # conv4: 4 x 4 + head
    assert report.source == f"{protonet_run} (last checkpoint, step 3)"
    start = experiment.algorithm.state_dict()
    for name, value in pretrained.items():
        assert np.array_equal(start[name], value), name
    (tmp_path / "maml").mkdir()
    result = runner.Trainer(experiment, tmp_path / "maml", progress=False).run()
    assert result.step == 3 and result.results["test"]["episodes"] == 4
    trained = model_arrays(tmp_path / "maml")
    assert not np.array_equal(trained["model.features.0.conv.weight"], pretrained["model.features.0.conv.weight"])


def test_finetune_from_a_protonet_run_with_frozen_blocks_and_l2_sp(protonet_run, tmp_path):
    """The CLI as a user runs it: the frozen blocks stay the pre-trained ones bit for bit, the
    others train (the model's head is unused: classification pre-trains ``pretrain.head``)."""
    run = tmp_path / "finetune"
    done = subprocess.run(
        [
            sys.executable, "-m", "metaplug", "train", "--backend", "torch", "--device", "cpu",
            "--tasks", "omniglot", "--ways", "5", "--shots", "1", "--queries", "2", "--set", "model.filters=8",
            "--algorithm", "finetune", "--set", "algorithm.regularization=l2-sp", "--iterations", "3",
            "--meta-batch-size", "2", "--val-every", "0", "--test-tasks", "4", "--run-dir", str(run),
            "--init-weights", str(protonet_run), "--freeze", "features.0.*", "--freeze", "features.1.*",
            "--freeze-during", "training",
        ],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"initial weights: 18 of 18 model weights from {protonet_run} (last checkpoint, step 3)" in done.stderr
    pretrained, trained = model_arrays(protonet_run), model_arrays(run)
    for name, value in trained.items():
        moved = name.startswith(("model.features.2.", "model.features.3."))
        assert np.array_equal(value, pretrained[name]) != moved, name
    results = json.loads((run / "results.json").read_text())["test"]
    assert results["loss"]["mean"] < results["loss_before"]["mean"]  # fine-tuning still adapts


@pytest.fixture
def tensorflow():
    pytest.importorskip("metaplug_tensorflow")
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")


SINUSOID = {"name": "sinusoid", "shots": 5, "queries": 5}


def test_a_torch_run_initialises_a_tensorflow_run(tensorflow, tmp_path):
    """The shared layout: a run directory of one backend starts the other from the same weights."""
    runner.start(make_config({"name": "maml"}, SINUSOID, hidden=[8, 8]), tmp_path / "torch", progress=False).run()
    cfg = check(
        make_config({"name": "fomaml"}, SINUSOID, "tensorflow", hidden=[8, 8], init_weights=str(tmp_path / "torch"))
    )
    state = build(cfg).algorithm.state_dict()
    for name, value in model_arrays(tmp_path / "torch").items():
        assert np.array_equal(state[name], value), name


def test_a_safetensors_file_of_a_torch_model_predicts_alike_on_tensorflow(tensorflow, tmp_path):
    torch_experiment = build(check(make_config({"name": "maml"}, SINUSOID, hidden=[8, 8])))
    module = torch_experiment.algorithm.model.module
    save_file({k: v.detach().numpy() for k, v in module.state_dict().items()}, str(tmp_path / "mlp.safetensors"))
    cfg = make_config(
        {"name": "maml"}, SINUSOID, "tensorflow", hidden=[8, 8], init_weights=str(tmp_path / "mlp.safetensors")
    )
    tf_algorithm = build(check(cfg)).algorithm
    x = np.linspace(-5, 5, 9, dtype=np.float32)[:, None]
    support = np.zeros((2, 1), np.float32)
    expected = torch_experiment.algorithm.adapt(support, support, steps=0).predict(x)
    np.testing.assert_allclose(tf_algorithm.adapt(support, support, steps=0).predict(x), expected, rtol=1e-5, atol=1e-6)

"""Your own model: the seed article's examples on both backends, torch/Keras parity on the
same weights, and ``--model module:function`` from the command line with its errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_assertions import assert_one_line_error

from metaplug.contract.interfaces import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "own_models"
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(importlib.util.find_spec(plugin) is None, reason=f"{plugin} missing"))
    for name, plugin in (("torch", "metaplug_torch"), ("tensorflow", "metaplug_tensorflow"))
]


@pytest.fixture
def examples(monkeypatch):
    """The example folder importable, as when its script runs."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import train

    return train


@pytest.mark.parametrize("algorithm", ["maml", "finetune"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_seed_articles_models_learn_with_maml_and_fine_tuning(examples, backend, algorithm):
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    result = examples.train(backend, algorithm)
    assert result["after"] < 0.7 * result["before"], result


def test_torch_and_keras_meta_learners_agree_on_the_same_weights(examples):
    """Two MAML steps (second order, outer SGD at rate 1), evaluation and adaptation give
    the same numbers in float64 on the torch MetaLearner and the Keras one given its weights."""
    pytest.importorskip("metaplug_torch")
    pytest.importorskip("metaplug_tensorflow")
    import torch
    from keras_models import MetaLearner as KerasMetaLearner
    from test_parity import assert_same_adaptation, assert_same_evaluation, close
    from torch_models import MetaLearner as TorchMetaLearner

    import metaplug
    from metaplug_tensorflow.layout import to_native

    tasks = examples.LinearTasks("train", seed=1, shots=5, queries=7)
    hyper = {"spec": tasks.spec, "optimizer": "sgd", "lr": 1.0, "inner_lr": 0.05, "inner_steps": 2}
    torch.manual_seed(0)
    torch_alg = metaplug.algorithm("maml", backend="torch", model=TorchMetaLearner().double(), **hyper)
    keras = pytest.importorskip("keras")
    keras.config.set_dtype_policy("float64")  # the layers' dtype is fixed when they are created
    try:
        keras_model = KerasMetaLearner()
    finally:
        keras.config.set_dtype_policy("float32")
    tf_alg = metaplug.algorithm("maml", backend="tensorflow", model=keras_model, **hyper)
    assert tf_alg.backend.dtype.name == "float64"
    torch_weights = list(torch_alg.params.values())
    for variable, parameter in zip(tf_alg.model.variables, torch_weights, strict=True):
        variable.assign(to_native(parameter.detach().numpy()))

    for batch in (tasks.sample(3), tasks.sample(3)):
        torch_metrics, tf_metrics = torch_alg.meta_train_step(batch), tf_alg.meta_train_step(batch)
        close(tf_metrics["loss"], torch_metrics["loss"], 1e-9, "meta_train_step loss")
        for variable, parameter in zip(tf_alg.model.variables, torch_weights, strict=True):
            close(variable.numpy(), to_native(parameter.detach().numpy()), 1e-9, "weights after the meta-step")
    batch = tasks.sample(3)
    assert_same_evaluation(torch_alg, tf_alg, batch, 1e-9)
    assert_same_adaptation(torch_alg, tf_alg, batch, 1e-9)


FACTORIES = """
import torch

def mlp(spec, hidden=16):
    layers = [torch.nn.Linear(spec.input_shape[0], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, spec.output_size)]
    return torch.nn.Sequential(*layers)

def three_outputs(spec):
    return torch.nn.Linear(spec.input_shape[0], 3)

def wrong_inputs(spec):
    return torch.nn.Linear(7, spec.output_size)

def failing(spec):
    raise ValueError("no GPU for this one")

not_callable = 42

def keras_mlp(spec):
    import keras
    return keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(spec.output_size)])

def keras_three_outputs(spec):
    import keras
    return keras.Sequential([keras.layers.Dense(3)])
"""
QUICK = ("--iterations", "20", "--meta-batch-size", "2", "--val-tasks", "2", "--test-tasks", "4", "--log-every", "10")


def metaplug(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture
def project(tmp_path) -> Path:
    """A working directory with a module of model factories (importable from it only)."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(FACTORIES))
    return tmp_path


@pytest.mark.parametrize(
    "backend, factory", [("torch", "my_models:mlp"), ("tensorflow", "my_models:keras_mlp")], ids=["torch", "keras"]
)
def test_a_factory_from_the_command_line_trains_resumes_and_evaluates(project, backend, factory):
    pytest.importorskip(f"metaplug_{backend}")
    run = project / "run"
    done = metaplug(project, "train", "--backend", backend, "--model", factory, "--run-dir", str(run), *QUICK)
    assert done.returncode == 0, done.stderr
    config = (run / "config.toml").read_text()
    assert f'name = "{factory}"' in config
    done = metaplug(project, "train", "--resume", str(run), "--iterations", "30")
    assert done.returncode == 0, done.stderr
    done = metaplug(project, "evaluate", str(run), "--episodes", "4")
    assert done.returncode == 0 and "MSE after adaptation" in done.stdout, done.stderr


def test_factory_options_come_from_the_model_section(project):
    pytest.importorskip("metaplug_torch")
    run = project / "run"
    options = ("--model", "my_models:mlp", "--set", "model.hidden=5")
    done = metaplug(project, "train", *options, "--run-dir", str(run), *QUICK)
    assert done.returncode == 0, done.stderr
    assert "hidden = 5" in (run / "config.toml").read_text()
    from metaplug.experiment import checkpoint

    assert checkpoint.load(run / "checkpoint").arrays["model.0.weight"].shape == (5, 1)


@pytest.mark.parametrize(
    "backend, model, fragments",
    [
        ("torch", "missing_module:build", ["cannot import module 'missing_module'", "ModuleNotFoundError"]),
        ("torch", "my_models:nothing", ["module 'my_models' has no 'nothing'"]),
        ("torch", "my_models:not_callable", ["is a int, not a callable"]),
        ("torch", "my_models:", ["a factory is named 'module:function'"]),
        ("torch", "my_models:failing", ["model factory 'my_models:failing' failed: ValueError: no GPU for this one"]),
        ("torch", "my_models:three_outputs", ["output has shape (2, 3)", "the tasks need (2, 1)"]),
        ("torch", "my_models:wrong_inputs", ["fails on examples of shape (1,)", "RuntimeError"]),
        ("tensorflow", "my_models:keras_three_outputs", ["output has shape (2, 3)", "the tasks need (2, 1)"]),
        ("tensorflow", "my_models:mlp", ["take a Keras model", "torch.nn"]),
    ],
)
def test_a_bad_factory_or_model_is_one_line_before_training(project, backend, model, fragments):
    pytest.importorskip(f"metaplug_{backend}")
    done = metaplug(project, "train", "--backend", backend, "--model", model, "--run-dir", str(project / "run"), *QUICK)
    assert_one_line_error(done, *fragments)
    assert not (project / "run" / "checkpoint").exists()


@pytest.mark.parametrize("backend, factory", [("torch", "mlp"), ("tensorflow", "keras_mlp")])
@pytest.mark.parametrize("algorithm", ["anil", "finetune"])
def test_algorithms_that_need_a_head_name_the_layers_they_look_for(project, monkeypatch, backend, factory, algorithm):
    pytest.importorskip(f"metaplug_{backend}")
    import metaplug
    from metaplug.errors import ConfigError
    from metaplug.tasks import SinusoidSampler

    monkeypatch.chdir(project)
    spec = SinusoidSampler("train", seed=0).spec
    with pytest.raises(ConfigError, match=rf"{algorithm} needs a .*'features'.*'head'.*head\(features\(x\)\)"):
        metaplug.algorithm(algorithm, spec=spec, backend=backend, model=f"my_models:{factory}")


def test_protonet_embeds_with_the_whole_output_of_a_model_without_parts():
    pytest.importorskip("metaplug_torch")
    import torch

    import metaplug
    from metaplug.contract.interfaces import EpisodeBatch

    spec = TaskSpec("classification", (4,), 3, num_classes=6)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 4)).astype(np.float32)
    y = np.tile(np.arange(3), (2, 2))
    batch = EpisodeBatch(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:], "classification")
    learner = metaplug.algorithm("protonet", spec=spec, backend="torch", model=torch.nn.Linear(4, 8))
    assert np.isfinite(learner.meta_train_step(batch)["loss"])

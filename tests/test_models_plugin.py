"""Models as plugins: the ``register_models`` hook, its records, the CLI and building through the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from plugin_factory import write_plugin

import metaplug
from metaplug.contract.hyperparameters import Conv4Options, MLPOptions, ResNet12Options
from metaplug.contract.interfaces import EpisodeBatch, ModelBuilder, ModelSpec, TaskSpec
from metaplug.contract.records import Component, validate
from metaplug.errors import BackendNotSupportedError, ConfigError, PluginError, UnknownComponentError
from metaplug.experiment.components import make_model, model_record
from metaplug.plugins import discovery as plugins

IMAGES = TaskSpec("classification", (1, 16, 16), 3, num_classes=10, default_model="conv4")


def run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("METAPLUG_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.delenv("METAPLUG_PLUGINS", raising=False)
    monkeypatch.delenv("METAPLUG_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield path
    plugins.reset()


# -- records and discovery -------------------------------------------------------------------


def test_model_records_need_backends_and_take_no_problems_or_role():
    record = validate(Component("tiny", "A tiny model.", "pkg.mod:Tiny", backends=["torch"]), "models")
    assert record.kind == "models" and record.backends == ("torch",)
    with pytest.raises(PluginError, match="invalid model record 'tiny': backends must name at least one backend"):
        validate(Component("tiny", "A tiny model.", "pkg.mod:Tiny"), "models")
    with pytest.raises(PluginError, match="models do not declare problems"):
        validate(
            Component("tiny", "A tiny model.", "pkg.mod:Tiny", backends=("torch",), problems=("regression",)), "models"
        )
    with pytest.raises(PluginError, match="only optimizers have a role"):
        validate(Component("tiny", "A tiny model.", "pkg.mod:Tiny", backends=("torch",), role="outer"), "models")


def test_a_plugin_registers_a_model_with_register_models(site):
    write_plugin(
        site,
        "tiny_model_plugin",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_models(register):
            register(Component("tiny", "A tiny model.", "tiny_model_plugin:Tiny", backends=("fakeb",)))

        class Tiny:
            '''Two numbers.'''

            @classmethod
            def build(cls, backend, spec):
                return [spec.output_size, spec.options.get("width", 2)]
        """,
    )
    found = plugins.discover()
    info = next(p for p in found.plugins if p.name == "tiny_model_plugin")
    assert info.ok and info.hooks == ["register_models"] and info.components == {"models": ["tiny"]}
    reg = found.registry
    record = reg.get("model", "tiny", backend="fakeb")
    assert record.describe().startswith("model 'tiny' (fakeb) from plugin 'tiny_model_plugin'")
    assert isinstance(record.load(), type) and isinstance(record.load(), ModelBuilder) is False  # no Options
    model, choice = make_model(reg, object(), "fakeb", "tiny", IMAGES, {"width": 5})
    assert model == [3, 5] and choice.options == {"width": 5}  # undeclared options pass through
    with pytest.raises(UnknownComponentError, match="unknown model 'tiyn'. Did you mean 'tiny'"):
        model_record(reg, "tiyn", "fakeb")
    with pytest.raises(BackendNotSupportedError, match="model 'tiny' is not available for backend 'torch'"):
        model_record(reg, "tiny", "torch")


def test_model_options_are_declared_once_in_the_host():
    assert MLPOptions().hidden == (40, 40)
    assert Conv4Options().as_dict() == {"filters": 64, "pooling": "max"}
    assert ResNet12Options().as_dict() == {
        "channels": (64, 160, 320, 640),
        "leak": 0.1,
        "drop_rate": 0.0,
        "dropblock_size": 5,
        "dropblock_ramp": 20000,
    }
    with pytest.raises(ConfigError, match=r"model.drop_rate must be in \[0, 1\), got 1.0"):
        ResNet12Options.parse({"drop_rate": 1.0}, "model 'resnet12'", "model")
    with pytest.raises(ConfigError, match="model.filters must be at least 1, got 0"):
        Conv4Options.parse({"filters": 0}, "model 'conv4'", "model")
    with pytest.raises(ConfigError, match="pooling must be one of max, stride"):
        Conv4Options(pooling="avg")
    with pytest.raises(ConfigError, match="hidden must name at least one layer size"):
        MLPOptions(hidden=())
    with pytest.raises(ConfigError, match="channels must be four widths"):
        ResNet12Options(channels=(8, 8))


# -- the first-party models --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_standard_models_are_registered_with_the_host_options(backend):
    pytest.importorskip(f"metaplug_{backend}")
    reg = plugins.registry()
    for name, options in (("mlp", MLPOptions), ("conv4", Conv4Options), ("resnet12", ResNet12Options)):
        record = reg.get("models", name, backend=backend)
        builder = record.load()
        assert builder.Options is options and isinstance(builder, ModelBuilder)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_registered_class_and_backend_build_model_give_the_same_model(backend):
    pytest.importorskip(f"metaplug_{backend}")
    reg = plugins.registry()
    instance = reg.load("backends", backend)()
    instance.seed(3)
    model, choice = make_model(reg, instance, backend, "conv4", IMAGES, {"filters": 4})
    assert choice.options == {"filters": 4, "pooling": "max"}
    instance.seed(3)
    direct = instance.build_model(ModelSpec("conv4", IMAGES.input_shape, IMAGES.output_size, {"filters": 4}))

    def weights(m):
        if backend == "torch":
            return [p.detach().numpy() for p in m.parameters()]
        return [v.numpy() for v in m.variables]

    for a, b in zip(weights(model), weights(direct), strict=True):
        np.testing.assert_array_equal(a, b)


def images(rng: np.random.Generator, tasks: int = 2, shots: int = 2) -> EpisodeBatch:
    ways = IMAGES.output_size
    labels = np.tile(np.arange(ways), (tasks, shots))
    return EpisodeBatch(
        rng.normal(size=(tasks, ways * shots, *IMAGES.input_shape)).astype(np.float32),
        labels,
        rng.normal(size=(tasks, ways * shots, *IMAGES.input_shape)).astype(np.float32),
        labels,
        "classification",
        np.tile(np.arange(ways), (tasks, 1)),
    )


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_python_entry_point_builds_a_model_by_name_through_the_registry(backend):
    pytest.importorskip(f"metaplug_{backend}")
    learner = metaplug.algorithm(
        "maml", spec=IMAGES, backend=backend, model="conv4", model_options={"filters": 4}, inner_lr=0.1
    )
    metrics = learner.meta_train_step(images(np.random.default_rng(0)))
    assert np.isfinite(metrics["loss"])
    assert learner.state_dict()["model.head.weight"].size == 4 * 3
    with pytest.raises(ConfigError, match="model.filters must be at least 1, got 0"):
        metaplug.algorithm("maml", spec=IMAGES, backend=backend, model="conv4", model_options={"filters": 0})
    with pytest.raises(
        metaplug.MetaplugError, match=f"unknown model 'conv44'. Did you mean 'conv4'.*Models for {backend}"
    ):
        metaplug.algorithm("maml", spec=IMAGES, backend=backend, model="conv44")


# -- the CLI -------------------------------------------------------------------------------------


def test_list_models_json_shows_mlp_and_conv4_for_both_backends():
    pytest.importorskip("metaplug_torch")
    pytest.importorskip("metaplug_tensorflow")
    done = run("list", "models", "--json")
    assert done.returncode == 0, done.stderr
    listed = {m["name"]: m for m in json.loads(done.stdout)}
    for name in ("mlp", "conv4"):
        assert listed[name]["backends"] == ["tensorflow", "torch"]
        assert listed[name]["plugins"] == ["tensorflow", "torch"]
        assert listed[name]["problems"] == [] and listed[name]["role"] is None
    only_torch = json.loads(run("list", "models", "--backend", "torch", "--json").stdout)
    assert {"mlp", "conv4"} <= {m["name"] for m in only_torch}


def test_info_model_conv4_shows_its_options_with_help():
    pytest.importorskip("metaplug_torch")
    done = run("info", "model", "conv4", "--backend", "torch")
    assert done.returncode == 0, done.stderr
    assert "model 'conv4' (torch) from plugin 'torch'" in done.stdout
    assert "filters: int = 64  # channels of every convolution" in done.stdout
    assert 'pooling: str = "max"  # max: 2x2 max-pooling per block' in done.stdout
    data = json.loads(run("info", "model", "conv4", "--json").stdout)
    assert [o["name"] for o in data["options"]] == ["filters", "pooling"]
    assert all(o["help"] for o in data["options"]) and data["all_backends"][-1] == "torch"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model", "conv4", "--set", "model.filters=0"], ["model.filters must be at least 1, got 0"]),
        (["--model", "conv5"], ["unknown model 'conv5'", "Did you mean 'conv4'?", "Models for torch: conv4, mlp"]),
        (["--set", "model.hiden=[4]"], ["model 'mlp' has no option 'hiden'", "Did you mean 'hidden'?"]),
    ],
)
def test_bad_model_input_is_a_one_line_error(args, fragments, tmp_path):
    pytest.importorskip("metaplug_torch")
    done = run("train", "--backend", "torch", "--iterations", "2", "--run-dir", str(tmp_path / "run"), *args)
    assert_one_line_error(done, *fragments)
    assert not (tmp_path / "run").exists()

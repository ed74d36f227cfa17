"""Registration through the entry point, lazy imports, and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_helpers import ALGORITHMS, IMAGES, SINUSOID, build, regression_batch

from metaplug.contract.interfaces import InnerRule, ModelSpec
from metaplug.errors import ConfigError
from metaplug.plugins.discovery import registry
from metaplug_torch.backend import Backend
from metaplug_torch.inner import InnerMetaSGD, InnerSGD


def test_every_component_is_registered_for_torch():
    reg = registry()
    for name in ALGORITHMS:
        record = reg.get("algorithms", name, backend="torch")
        assert record.plugin == "torch"
        assert record.problems == (("classification",) if name == "protonet" else ("regression", "classification"))
        assert record.load().name == name
    roles = {
        n: reg.get("optimizers", n, backend="torch").role
        for n in ("sgd", "adam", "rmsprop", "inner-sgd", "inner-metasgd")
    }
    assert roles == {
        "sgd": "outer",
        "adam": "outer",
        "rmsprop": "outer",
        "inner-sgd": "inner",
        "inner-metasgd": "inner",
    }
    assert isinstance(reg.load("optimizers", "inner-metasgd", backend="torch")(), InnerRule)
    backend = reg.load("backends", "torch")()
    assert backend.name == "torch" and set(backend.models) == {"mlp", "conv4", "resnet12"}


def test_discovery_imports_no_torch():
    code = (
        "import sys, metaplug.plugins.discovery as p; p.registry().names('algorithms'); "
        "import metaplug_torch.plugin; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_standard_models_have_the_documented_layout():
    backend = Backend("cpu")
    mlp = backend.build_model(ModelSpec("mlp", (1,), 1))
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == {
        "features.0.weight": (40, 1),
        "features.0.bias": (40,),
        "features.1.weight": (40, 40),
        "features.1.bias": (40,),
        "head.weight": (1, 40),
        "head.bias": (1,),
    }
    conv = backend.build_model(ModelSpec("conv4", (1, 28, 28), 5))
    shapes = {k: tuple(v.shape) for k, v in conv.state_dict().items()}
    assert shapes["features.0.conv.weight"] == (64, 1, 3, 3)
    assert shapes["features.3.norm.bias"] == (64,)
    assert shapes["head.weight"] == (5, 64)
    assert len(shapes) == 18
    assert conv(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    strided = backend.build_model(ModelSpec("conv4", (3, 84, 84), 5, {"filters": 32, "pooling": "stride"}))
    assert strided.head.weight.shape == (5, 32 * 6 * 6)
    assert strided(torch.zeros(2, 3, 84, 84)).shape == (2, 5)


def test_batch_norm_uses_batch_statistics():
    conv = Backend("cpu").build_model(ModelSpec("conv4", (1, 16, 16), 3, {"filters": 4}))
    block = conv.features[0]
    x = torch.randn(6, 1, 16, 16) * 3 + 2
    normed = block.norm(block.conv(x))
    assert torch.allclose(normed.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(normed.var((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)


def test_protonet_on_regression_is_a_config_error():
    with pytest.raises(ConfigError, match="protonet supports classification only, not regression"):
        build("protonet", SINUSOID)


def test_unknown_inner_rule_suggests_the_right_name():
    message = "inner_rule 'inner-sdg' is unknown. Did you mean 'inner-sgd'\\? Inner rules for torch: "
    with pytest.raises(ConfigError, match=message):
        build("maml", SINUSOID, inner_rule="inner-sdg")
    outer = "'adam' is an outer optimizer; inner rules for torch: inner-adam, inner-metasgd, inner-rmsprop, inner-sgd"
    with pytest.raises(ConfigError, match=outer):
        build("maml", SINUSOID, inner_rule="adam")


def test_built_directly_an_algorithm_finds_only_the_builtin_rules():
    maml = registry().load("algorithms", "metasgd", backend="torch")(spec=SINUSOID, backend=Backend("cpu"))
    assert isinstance(maml.rule, InnerMetaSGD) and set(maml.extra) == {f"inner.{n}" for n in maml.params}
    with pytest.raises(ConfigError, match="inner_rule 'inner-sign' is not built into metaplug-torch .*pass rule="):
        registry().load("algorithms", "maml", backend="torch")(spec=SINUSOID, inner_rule="inner-sign")
    with pytest.raises(ConfigError, match="reptile has no inner_rule option; it takes no rule="):
        build("reptile", SINUSOID, rule=InnerSGD())


@pytest.mark.parametrize(
    "options,message",
    [
        ({"batching": "fast"}, "batching must be one of auto, vectorized, loop, reference, got 'fast'"),
        ({"inner_lr": -1.0}, "inner_lr must be greater than 0, got -1.0"),
        ({"inner_steps": 0}, "inner_steps must be at least 1, got 0"),
    ],
)
def test_bad_hyperparameters_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build("maml", SINUSOID, **options)


def test_bad_models_are_config_errors():
    backend = Backend("cpu")
    with pytest.raises(ConfigError, match="unknown model 'conv5'.*Did you mean 'conv4'"):
        backend.build_model(ModelSpec("conv5", (1, 28, 28), 5))
    with pytest.raises(ConfigError, match="model 'conv4' has no option 'width'"):
        backend.build_model(ModelSpec("conv4", (1, 28, 28), 5, {"width": 3}))
    tracking = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    with pytest.raises(ConfigError, match="tracks running statistics; build it with track_running_stats=False"):
        build("maml", SINUSOID, model=tracking)
    with pytest.raises(ConfigError, match="anil needs a model with a 'features' submodule .* and a 'head' submodule"):
        build("anil", SINUSOID, model=torch.nn.Sequential(torch.nn.Linear(1, 1)))


def test_user_module_with_native_batch_norm_trains_per_task():
    model = torch.nn.Sequential(
        torch.nn.Linear(1, 8),
        torch.nn.BatchNorm1d(8, track_running_stats=False),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 1),
    )
    algorithm = build("maml", SINUSOID, model=model)
    assert algorithm.mode == "loop"  # native batch norm's second-order gradients are wrong under vmap
    batch = regression_batch()
    before = algorithm.evaluate(batch)["loss"].mean()
    for _ in range(30):
        algorithm.meta_train_step(batch)
    assert algorithm.evaluate(batch)["loss"].mean() < before


def test_third_party_inner_rule_instance():
    class SignSGD:
        def init(self, params, lr):
            return {}

        def step(self, params, grads, learnables, lr):
            return {n: p - lr * grads[n].sign() for n, p in params.items()}

    algorithm = build("maml", SINUSOID, rule=SignSGD(), inner_lr=0.5)
    batch = regression_batch()
    result = algorithm.evaluate(batch, steps=1)
    assert np.all(result["loss"] != result["loss_before"])
    assert np.isfinite(algorithm.meta_train_step(batch)["loss"])


def test_regression_batch_for_classification_algorithm_is_an_error():
    algorithm = build("maml", IMAGES)
    with pytest.raises(ConfigError, match="set up for classification but got a regression batch"):
        algorithm.meta_train_step(regression_batch())


def test_readme_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "range(2000)" in code
    namespace: dict = {}
    exec(code.replace("range(2000)", "range(3)"), namespace)
    assert namespace["prediction"].shape == (10, 1)


def test_read_only_arrays_become_tensors_without_warnings(recwarn):
    array = np.arange(6.0).reshape(2, 3)
    array.flags.writeable = False  # e.g. arrays loaded from a read-only cache
    tensor = Backend("cpu").tensor(array)
    assert tensor.dtype == torch.float32 and tensor.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_outer_optimizers_are_torch_optimizers_with_the_host_options():
    from metaplug_torch import optimizers

    params = [torch.nn.Parameter(torch.ones(2))]
    adam = optimizers.Adam(params, lr=0.1, betas=[0.5, 0.9], amsgrad=True, weight_decay=0.01)
    assert isinstance(adam, torch.optim.Adam) and adam.options.betas == (0.5, 0.9)
    assert adam.param_groups[0] | {"betas": (0.5, 0.9), "amsgrad": True, "weight_decay": 0.01} == adam.param_groups[0]
    rmsprop = optimizers.RMSprop(params, lr=0.1, centered=True, momentum=0.5)
    assert rmsprop.param_groups[0]["centered"] and rmsprop.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ConfigError, match="nesterov needs a positive momentum"):
        optimizers.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ConfigError, match="lr must be greater than 0, got 0"):
        optimizers.SGD(params, lr=0)

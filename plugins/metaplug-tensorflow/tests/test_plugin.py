"""Registration through the entry point, lazy imports and clear errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from metaplug.contract.interfaces import Algorithm, Backend
from metaplug.errors import ConfigError, MetaplugError
from metaplug.plugins.discovery import registry
from metaplug.tasks import SinusoidSampler

ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "metasgd", "protonet", "finetune")


def test_every_component_is_registered_for_tensorflow():
    reg = registry()
    for name in ALGORITHMS:
        record = reg.get("algorithms", name, backend="tensorflow")
        assert record.plugin == "tensorflow" and record.distribution.startswith("metaplug-tensorflow")
        assert isinstance(record.load(), type)
    assert reg.get("algorithms", "protonet", backend="tensorflow").problems == ("classification",)
    for name, role in [
        ("sgd", "outer"),
        ("adam", "outer"),
        ("rmsprop", "outer"),
        ("inner-sgd", "inner"),
        ("inner-metasgd", "inner"),
    ]:
        assert reg.get("optimizers", name, backend="tensorflow").role == role
    backend = reg.load("backends", "tensorflow")()
    assert isinstance(backend, Backend) and backend.name == "tensorflow"
    assert backend.models == ("mlp", "conv4", "resnet12")


def test_discovery_imports_no_framework():
    code = (
        "import sys, json\n"
        "from metaplug.plugins.discovery import registry\n"
        "names = registry().names('algorithms')\n"
        "import metaplug_tensorflow.plugin\n"
        "print(json.dumps([names, sorted(m for m in ('tensorflow', 'torch', 'keras') if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, frameworks = json.loads(out.strip().splitlines()[-1])
    assert set(ALGORITHMS) <= set(names)
    assert frameworks == []


def test_algorithm_satisfies_the_protocol(make):
    sampler = SinusoidSampler("train", 0)
    assert isinstance(make("maml", sampler.spec), Algorithm)


@pytest.mark.parametrize(
    "name, hyper, message",
    [
        ("maml", {"inner_rule": "inner-sdg"}, "'inner-sdg' is unknown. Did you mean 'inner-sgd'"),
        ("maml", {"inner_rule": "adam"}, "is an outer optimizer"),
        ("maml", {"batching": "vmap"}, "batching must be one of auto, vectorized, loop, reference, got 'vmap'"),
        ("maml", {"batching": "reference"}, "batching 'reference' is not available on backend 'tensorflow'"),
        ("maml", {"inner_lr": -1}, "inner_lr must be greater than 0, got -1$"),
        ("reptile", {"inner_steps": 0}, "inner_steps must be at least 1, got 0"),
        ("finetune", {"finetune": "some"}, "finetune must be one of all, head, got 'some'"),
    ],
)
def test_bad_hyperparameters_are_one_line_errors(make, name, hyper, message):
    spec = SinusoidSampler("train", 0).spec
    with pytest.raises(MetaplugError, match=message) as info:
        make(name, spec, **hyper)
    assert "\n" not in str(info.value)


def test_protonet_refuses_regression(make):
    with pytest.raises(ConfigError, match="protonet supports classification only, not regression tasks"):
        make("protonet", SinusoidSampler("train", 0).spec)


def test_batches_that_do_not_fit_the_spec_are_refused(make, image_batches):
    spec = SinusoidSampler("train", 0).spec
    algorithm = make("maml", spec)
    with pytest.raises(ConfigError, match="built for regression tasks, got a classification batch"):
        algorithm.meta_train_step(image_batches[1][0])
    with pytest.raises(ConfigError, match="examples have shape"):
        algorithm.adapt(image_batches[1][0].support_x[0], image_batches[1][0].support_y[0])


@pytest.mark.parametrize(
    "device, message",
    [
        ("cpu:3", "TensorFlow sees 1 CPU device(s)"),
        ("tpu", "device must be 'cpu', 'gpu' or 'gpu:N'"),
        ("gpu:x", "device must be 'cpu', 'gpu' or 'gpu:N'"),
    ],
)
def test_a_device_tensorflow_would_not_use_is_a_config_error(device, message):
    from metaplug_tensorflow.backend import Backend

    with pytest.raises(ConfigError, match=re.escape(message)):
        Backend(device=device)
    assert Backend(device="CPU:0").device == "CPU:0"

"""Stacked weights (the MAML family's ``vectorized`` mode on MLPs) equal ``vmap`` and the loops (float64)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch_helpers import IMAGES, SINUSOID, build, image_batch, regression_batch

from metaplug.contract.interfaces import ModelSpec
from metaplug_torch import models, stacked
from metaplug_torch.algorithms.maml import MAML


def run(name, spec, batch, *, enabled, model=None, **options):
    saved = stacked.ENABLED
    stacked.ENABLED = enabled
    try:
        model = None if model is None else copy.deepcopy(model)  # training changes it in place
        algorithm = build(name, spec, lr=0.01, optimizer="sgd", model=model, **options)
        assert (algorithm.stacked_model(MAML, ("_train_task",)) is not None) == (
            enabled and algorithm.mode == "vectorized"
        )
        metrics = [algorithm.meta_train_step(batch) for _ in range(2)]
        return metrics, algorithm.state_dict(), algorithm.evaluate(batch, steps=3)
    finally:
        stacked.ENABLED = saved


def assert_same(ours, theirs):
    (metrics, state, evaluation), (other_metrics, other_state, other_evaluation) = ours, theirs
    for a, b in zip(metrics, other_metrics, strict=True):
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-10, atol=1e-13)
    assert state.keys() == other_state.keys()
    for key in state:
        np.testing.assert_allclose(state[key], other_state[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert evaluation.keys() == other_evaluation.keys()
    for key in evaluation:
        np.testing.assert_allclose(evaluation[key], other_evaluation[key], rtol=1e-10, atol=1e-13, err_msg=key)


CASES = [
    ("maml", {}),
    ("maml", {"inner_steps": 3, "inner_rule": "inner-adam"}),
    ("maml", {"inner_steps": 2, "inner_rule": "inner-rmsprop", "freeze": ("features.0.*",)}),
    ("maml", {"freeze": ("head.bias",), "freeze_during": "adaptation"}),
    ("fomaml", {"inner_steps": 2}),
    ("anil", {"inner_steps": 2}),
    ("metasgd", {}),
]


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_stacked_weights_equal_vmap_and_the_loop_on_the_mlp(name, options):
    batch = regression_batch(tasks=4)
    fast = run(name, SINUSOID, batch, enabled=True, batching="vectorized", **options)
    assert_same(fast, run(name, SINUSOID, batch, enabled=False, batching="vectorized", **options))
    assert_same(fast, run(name, SINUSOID, batch, enabled=True, batching="loop", **options))


def test_classification_with_an_mlp_on_images_and_a_sequential_model():
    batch = image_batch(tasks=3)
    for model in (
        models.mlp(IMAGES.input_shape, IMAGES.output_size, hidden=(12,)),
        nn.Sequential(
            nn.Flatten(), nn.Linear(256, 10), nn.Tanh(), nn.Linear(10, 10), nn.LeakyReLU(0.2), nn.Linear(10, 3)
        ),
    ):
        options = {"batching": "vectorized", "inner_steps": 2}  # classification: cross-entropy, accuracy
        fast = run("maml", IMAGES, batch, enabled=True, model=model, **options)
        assert_same(fast, run("maml", IMAGES, batch, enabled=False, model=model, **options))
        assert_same(fast, run("maml", IMAGES, batch, enabled=True, model=model, batching="loop", inner_steps=2))


def test_only_linear_layers_and_elementwise_activations_are_stacked():
    mlp = models.builder("mlp").build(None, ModelSpec("mlp", (1,), 1, {}))
    assert stacked.StackedMLP.of(mlp) is not None
    assert stacked.StackedMLP.of(nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 1))) is not None
    conv4 = models.builder("conv4").build(None, ModelSpec("conv4", (1, 16, 16), 3, {"filters": 4}))

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    for other in (
        conv4,
        nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False)),
        nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.1)),
        nn.Sequential(Scaled(2, 3)),
        nn.Sequential(nn.Flatten(0), nn.Linear(2, 3)),
    ):
        assert stacked.StackedMLP.of(other) is None


class ClippedSGD:
    """Not elementwise: scales each weight's step by its gradient's norm."""

    def init(self, params, lr):
        return {}

    def step(self, params, grads, learnables, lr):
        return {n: p - lr * grads[n] / (1 + grads[n].norm()) for n, p in params.items()}


class ScaledOutput(MAML):
    def task_output(self, params, fast, h):
        return 2 * super().task_output(params, fast, h)


def test_a_rule_that_is_not_elementwise_or_an_overridden_hook_runs_under_vmap():
    batch = regression_batch(tasks=3)
    custom = build("maml", SINUSOID, batching="vectorized", rule=ClippedSGD())
    assert custom.stacked_model(MAML, ("_train_task",)) is None
    loop = build("maml", SINUSOID, batching="loop", rule=ClippedSGD())
    for algorithm in (custom, loop):
        algorithm.meta_train_step(batch)
    for key, value in loop.state_dict().items():
        np.testing.assert_allclose(custom.state_dict()[key], value, rtol=1e-9, atol=1e-12)
    backend_model = build("maml", SINUSOID).model.module
    subclass = ScaledOutput(backend=build("maml", SINUSOID).backend, model=backend_model, spec=SINUSOID)
    assert subclass.mode == "vectorized" and subclass.stacked_model(MAML, ("_train_task",)) is None


def test_auto_uses_stacked_weights_on_the_mlp_in_float32():
    batch = regression_batch(tasks=5)
    fast = build("maml", SINUSOID, dtype=torch.float32)
    assert fast.mode == "vectorized" and fast.stacked_model(MAML, ("_train_task",)) is not None
    loop = build("maml", SINUSOID, dtype=torch.float32, batching="loop")
    for algorithm in (fast, loop):
        algorithm.meta_train_step(batch)
    for key, value in loop.state_dict().items():
        np.testing.assert_allclose(fast.state_dict()[key], value, rtol=1e-5, atol=1e-6, err_msg=key)

"""The vectorized path equals the per-task loops, for every algorithm (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_helpers import ALGORITHMS, IMAGES, SINUSOID, build, image_batch, regression_batch

CASES = [
    (name, spec) for name in ALGORITHMS for spec in (SINUSOID, IMAGES) if not (name == "protonet" and spec is SINUSOID)
]


def run(name, spec, batching):
    batch = image_batch() if spec is IMAGES else regression_batch()
    # SGD, not Adam: Adam turns the (exactly zero) gradients of convolution biases before
    # batch norm, which are rounding noise, into full-size steps
    algorithm = build(name, spec, batching=batching, lr=0.01, optimizer="sgd")
    metrics = [algorithm.meta_train_step(batch) for _ in range(2)]
    return metrics, algorithm.state_dict(), algorithm.evaluate(batch, steps=2)


@pytest.mark.parametrize("name,spec", CASES, ids=[f"{n}-{s.problem}" for n, s in CASES])
def test_vectorized_equals_loop_and_reference(name, spec):
    results = {mode: run(name, spec, mode) for mode in ("vectorized", "loop", "reference")}
    metrics, state, evaluation = results["loop"]
    for mode in ("vectorized", "reference"):
        other_metrics, other_state, other_evaluation = results[mode]
        for a, b in zip(metrics, other_metrics, strict=True):
            assert a.keys() == b.keys()
            np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-9, atol=1e-12)
        assert state.keys() == other_state.keys()
        for key in state:
            np.testing.assert_allclose(other_state[key], state[key], rtol=1e-8, atol=1e-11, err_msg=key)
        for key in evaluation:
            np.testing.assert_allclose(other_evaluation[key], evaluation[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_auto_picks_vectorized_for_the_mlp_and_loop_for_conv4_on_the_cpu():
    assert build("maml", SINUSOID).mode == "vectorized"
    conv4 = build("maml", IMAGES)
    assert conv4.mode == ("loop" if conv4.device.type == "cpu" else "vectorized")


def test_auto_picks_vectorized_for_conv4_on_a_gpu_and_loop_for_native_batch_norm():
    from metaplug_torch.batching import resolve
    from metaplug_torch.functional import FunctionalModel

    conv4 = build("maml", IMAGES).model
    assert resolve("auto", conv4, "cuda") == "vectorized"
    assert resolve("auto", conv4, "cpu") == "loop"
    norm = torch.nn.BatchNorm1d(3, track_running_stats=False)
    native = FunctionalModel(torch.nn.Sequential(torch.nn.Linear(2, 3), norm))
    assert resolve("auto", native, "cuda") == "loop"
    assert resolve("loop", conv4, "cuda") == "loop"


def test_chunked_vmap_equals_one_vmap_call():
    batch = image_batch(tasks=3)
    whole = build("maml", IMAGES, batching="vectorized")
    chunked = build("maml", IMAGES, batching="vectorized")
    chunked.vmap_chunk = 2
    for algorithm in (whole, chunked):
        algorithm.meta_train_step(batch)
    for key, value in whole.state_dict().items():
        np.testing.assert_allclose(chunked.state_dict()[key], value, rtol=1e-10, atol=1e-13)


def test_channels_last_switch_gives_the_same_step(monkeypatch):
    from metaplug_torch import models

    batch = image_batch()
    plain = build("maml", IMAGES, batching="loop", optimizer="sgd", lr=0.01)
    plain.meta_train_step(batch)
    monkeypatch.setattr(models, "CHANNELS_LAST_ON_CPU", True)
    fast = build("maml", IMAGES, batching="loop", optimizer="sgd", lr=0.01)
    fast.meta_train_step(batch)
    for key, value in plain.state_dict().items():
        np.testing.assert_allclose(fast.state_dict()[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 8, 28, 28), (3, 4, 7, 7)], ids=["even", "odd"])
def test_the_loop_styles_max_pooling_is_bitwise_native_pooling_to_second_order(dtype, shape):
    """Rounded inputs tie within windows: both pick the first maximum."""
    import torch.nn.functional as F

    from metaplug_torch.models import MaxPool2x2

    generator = torch.Generator().manual_seed(0)
    x = torch.round(2 * torch.randn(shape, dtype=dtype, generator=generator)).requires_grad_()
    weights = torch.randn((*shape[:2], shape[2] // 2, shape[3] // 2), dtype=dtype, generator=generator)
    found = []
    for pool in (lambda t: F.max_pool2d(t, 2), MaxPool2x2.apply):
        y = pool(1.5 * x)
        (g,) = torch.autograd.grad((y * weights).sum() + y.square().sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        found.append((y, g, gg))
    assert all(torch.equal(a, b) for a, b in zip(*found, strict=True))


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_the_loop_styles_batch_norm_equals_native_batch_norm_to_second_order(offset):
    """Same values, gradients and second-order gradients as ``F.batch_norm`` (float64), and
    float32 statistics as precise as PyTorch's own kernel, far from zero too."""
    import torch.nn.functional as F

    from metaplug_torch.models import CPUBatchNorm

    generator = torch.Generator().manual_seed(1)
    x = (2 * torch.randn(6, 4, 5, 5, dtype=torch.float64, generator=generator) + offset).requires_grad_()
    weight = (torch.rand(4, dtype=torch.float64, generator=generator) + 0.5).requires_grad_()
    bias = torch.randn(4, dtype=torch.float64, generator=generator).requires_grad_()
    outer = torch.randn(6, 4, 5, 5, dtype=torch.float64, generator=generator)
    found = []
    for norm in (lambda *a: F.batch_norm(a[0], None, None, a[1], a[2], True, 0.0, 1e-5), CPUBatchNorm.apply):
        y = norm(x, weight, bias, 1e-5)
        grads = torch.autograd.grad((y * outer).sum() + y.pow(3).sum(), (x, weight, bias), create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), (x, weight, bias))
        found.append((y, *grads, *second))
    for native, ours in zip(*found, strict=True):
        torch.testing.assert_close(ours, native, rtol=1e-9, atol=1e-9)

    big = 2 * torch.randn(75, 64, 28, 28, generator=generator) + offset
    w, b = torch.rand(64, generator=generator) + 0.5, torch.randn(64, generator=generator)
    exact = F.batch_norm(big.double(), None, None, w.double(), b.double(), True, 0.0, 1e-5)
    native_error = (F.batch_norm(big, None, None, w, b, True, 0.0, 1e-5).double() - exact).abs().max()
    our_error = (CPUBatchNorm.apply(big, w, b, 1e-5).double() - exact).abs().max()
    assert our_error <= 2.5 * native_error


def test_adapt_runs_in_every_batching_mode_on_conv4():
    """adapt's inner loop runs in its mode's execution style (vectorized: torch.func, whose
    layers must not be the loop style's autograd.Function pooling), as evaluate does."""
    support = image_batch(tasks=1)
    predictions = {}
    for mode in ("vectorized", "loop", "reference"):
        maml = build("maml", IMAGES, batching=mode, dtype=torch.float32)
        adapted = maml.adapt(support.support_x[0], support.support_y[0], steps=2)
        predictions[mode] = adapted.predict(support.query_x[0])
    np.testing.assert_allclose(predictions["vectorized"], predictions["loop"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predictions["reference"], predictions["loop"], rtol=1e-4, atol=1e-5)


def test_conv4_runs_under_torch_func_and_deterministic_algorithms():
    """User code may differentiate a conv4 with torch.func, or ask for deterministic
    algorithms: the loop style's faster pooling steps aside, with the same values."""
    module = build("maml", IMAGES).model.module
    params = {k: v.detach() for k, v in module.named_parameters()}
    x = torch.from_numpy(image_batch(tasks=1).support_x[0]).double()
    plain = torch.func.functional_call(module, params, (x,))

    def loss(p):
        return torch.func.functional_call(module, p, (x,)).square().sum()

    grads = torch.func.grad(loss)(params)
    assert all(torch.isfinite(g).all() for g in grads.values())
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = module(x)
        deterministic.square().sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
    torch.testing.assert_close(deterministic.detach(), plain, rtol=0, atol=0)

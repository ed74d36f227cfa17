"""The standard models against an independent numpy implementation in the shared layout."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import ConfigError
from metaplug_tensorflow.backend import Backend
from metaplug_tensorflow.layout import channels_last, to_native, to_shared


def numpy_conv4(weights: dict[str, np.ndarray], x: np.ndarray, pooling: str) -> np.ndarray:
    """conv4 as docs/models.md describes it, on channel-first images ``(N, C, H, W)``."""
    stride = 2 if pooling == "stride" else 1
    h = x
    for i in range(4):
        kernel, bias = weights[f"features.{i}.conv.weight"], weights[f"features.{i}.conv.bias"]
        padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
        windows = windows[:, :, ::stride, ::stride]  # (N, C, H', W', 3, 3)
        h = np.einsum("nchwij,ocij->nohw", windows, kernel) + bias[None, :, None, None]
        mean = h.mean(axis=(0, 2, 3), keepdims=True)
        var = ((h - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        h = (h - mean) / np.sqrt(var + 1e-5)
        h = (
            h * weights[f"features.{i}.norm.weight"][None, :, None, None]
            + weights[f"features.{i}.norm.bias"][None, :, None, None]
        )
        h = np.maximum(h, 0)
        if pooling == "max":
            n, c, hh, ww = h.shape
            h = h[:, :, : hh // 2 * 2, : ww // 2 * 2].reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
    h = h.reshape(h.shape[0], -1)
    return h @ weights["head.weight"].T + weights["head.bias"]


def numpy_mlp(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x.reshape(x.shape[0], -1)
    i = 0
    while f"features.{i}.weight" in weights:
        h = np.maximum(h @ weights[f"features.{i}.weight"].T + weights[f"features.{i}.bias"], 0)
        i += 1
    return h @ weights["head.weight"].T + weights["head.bias"]


def shared_weights(model) -> dict[str, np.ndarray]:
    return {n: to_shared(v.numpy()) for n, v in zip(model.names, model.variables, strict=True)}


@pytest.fixture(scope="module")
def backend() -> Backend:
    b = Backend(dtype="float64")
    b.seed(3)
    return b


@pytest.mark.parametrize("pooling, size, feature_size", [("max", 28, 6), ("stride", 28, 24), ("stride", 20, 24)])
def test_conv4_matches_numpy_reference(backend, pooling, size, feature_size):
    model = backend.build_model(ModelSpec("conv4", (2, size, size), 5, {"filters": 6, "pooling": pooling}))
    weights = shared_weights(model)
    assert weights["head.weight"].shape == (5, feature_size)
    assert weights["features.0.conv.weight"].shape == (6, 2, 3, 3)
    rng = np.random.default_rng(0)
    # random norm scales and shifts so that a swapped or ignored one shows
    for i in range(4):
        model.variables[model.names.index(f"features.{i}.norm.weight")].assign(rng.uniform(0.5, 2, 6))
        model.variables[model.names.index(f"features.{i}.norm.bias")].assign(rng.normal(size=6))
    weights = shared_weights(model)
    x = rng.normal(size=(2, 7, 2, size, size))  # two tasks, each normalised with its own statistics
    out = model(model.variables, backend.inputs(x, 3)).numpy()
    for t in range(2):
        np.testing.assert_allclose(out[t], numpy_conv4(weights, x[t], pooling), rtol=1e-10, atol=1e-10)


def test_mlp_matches_numpy_reference_and_layout(backend):
    model = backend.build_model(ModelSpec("mlp", (1,), 1))
    assert [tuple(to_shared(v.numpy()).shape) for v in model.variables] == [
        (40, 1),
        (40,),
        (40, 40),
        (40,),
        (1, 40),
        (1,),
    ]
    weights = shared_weights(model)
    x = np.random.default_rng(1).uniform(-5, 5, size=(3, 10, 1))
    out = model(model.variables, backend.inputs(x, 1)).numpy()
    np.testing.assert_allclose(out.reshape(30, 1), numpy_mlp(weights, x.reshape(30, 1)), rtol=1e-12)


def test_per_task_weights_loop_and_vectorized_agree(backend):
    model = backend.build_model(ModelSpec("conv4", (1, 16, 16), 3, {"filters": 4}))
    rng = np.random.default_rng(2)
    per_task = [v + rng.normal(scale=0.1, size=(3, *v.shape)) for v in model.variables]
    x = backend.inputs(rng.normal(size=(3, 5, 1, 16, 16)), 3)
    loop = model(per_task, x, per_task=True, vectorized=False).numpy()
    vec = model(per_task, x, per_task=True, vectorized=True).numpy()
    np.testing.assert_allclose(loop, vec, rtol=1e-12)
    for t in range(3):
        one = model([p[t] for p in per_task], x[t : t + 1]).numpy()[0]
        np.testing.assert_allclose(loop[t], one, rtol=1e-12)


def test_layout_round_trip_and_channels_last():
    rng = np.random.default_rng(0)
    for shape in [(5,), (4, 3), (8, 2, 3, 3)]:
        a = rng.normal(size=shape)
        assert np.array_equal(to_shared(to_native(a)), a)
    assert to_native(np.zeros((8, 2, 3, 3))).shape == (3, 3, 2, 8)
    assert to_native(np.zeros((5, 4))).shape == (4, 5)
    images = rng.normal(size=(2, 3, 1, 4, 4))
    assert np.array_equal(channels_last(images, 3)[0, 1, :, :, 0], images[0, 1, 0])


@pytest.mark.parametrize(
    "name, spec, message",
    [
        ("resnet", ModelSpec("resnet", (1,), 1), "unknown model 'resnet'"),
        ("conv4 small", ModelSpec("conv4", (1, 8, 8), 5), "at least 16x16"),
        ("conv4 pooling", ModelSpec("conv4", (1, 28, 28), 5, {"pooling": "avg"}), "pooling"),
        (
            "mlp option",
            ModelSpec("mlp", (1,), 1, {"hiden": (4,)}),
            "model 'mlp' has no option 'hiden'. Did you mean 'hidden'",
        ),
    ],
)
def test_bad_model_specs_raise_config_errors(backend, name, spec, message):
    with pytest.raises(ConfigError, match=message):
        backend.build_model(spec)


def test_backend_rejects_bad_settings():
    with pytest.raises(ConfigError, match="dtype"):
        Backend(dtype="float16")
    with pytest.raises(ConfigError, match="device"):
        Backend(device="tpu")


def test_seed_makes_initialisation_reproducible():
    b = Backend()
    spec = ModelSpec("mlp", (1,), 1)
    b.seed(7)
    first = b.build_model(spec).variables[0].numpy()
    b.seed(7)
    assert np.array_equal(first, b.build_model(spec).variables[0].numpy())
    b.seed(8)
    assert not np.array_equal(first, b.build_model(spec).variables[0].numpy())

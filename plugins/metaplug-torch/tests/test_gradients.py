"""MAML's second-order meta-gradient against an independent computation, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_helpers import IMAGES, SINUSOID, build, image_batch, meta_gradient, regression_batch


def mlp_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = F.relu(F.linear(x, p["features.0.weight"], p["features.0.bias"]))
    x = F.relu(F.linear(x, p["features.1.weight"], p["features.1.bias"]))
    return F.linear(x, p["head.weight"], p["head.bias"])


def conv4_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for i in range(4):
        x = F.conv2d(x, p[f"features.{i}.conv.weight"], p[f"features.{i}.conv.bias"], padding=1)
        x = F.batch_norm(
            x, None, None, p[f"features.{i}.norm.weight"], p[f"features.{i}.norm.bias"], training=True, eps=1e-5
        )
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])


def independent_maml_gradient(forward, params, batch, loss, lr, steps, head_only=False):
    """learn2learn-style: a Python loop over tasks, create_graph=True, plain modules' ops."""
    theta = {k: torch.from_numpy(v).double().requires_grad_() for k, v in params.items()}
    total = 0.0
    for t in range(batch.num_tasks):
        sx, qx = (torch.from_numpy(a[t]).double() for a in (batch.support_x, batch.query_x))
        sy, qy = (torch.from_numpy(a[t]) for a in (batch.support_y, batch.query_y))
        if sy.is_floating_point():
            sy, qy = sy.double(), qy.double()
        fast = dict(theta)
        names = [k for k in fast if k.startswith("head.")] if head_only else list(fast)
        for _ in range(steps):
            grads = torch.autograd.grad(loss(forward(fast, sx), sy), [fast[k] for k in names], create_graph=True)
            fast.update({k: fast[k] - lr * g for k, g in zip(names, grads, strict=True)})
        total = total + loss(forward(fast, qx), qy) / batch.num_tasks
    grads = torch.autograd.grad(total, list(theta.values()))
    return {k: g.numpy() for k, g in zip(theta, grads, strict=True)}


def assert_close(ours: dict[str, np.ndarray], expected: dict[str, np.ndarray], rtol: float = 1e-6) -> None:
    """Every entry within ``rtol`` of the largest gradient entry (convolution biases before
    batch norm have an exact zero gradient, so a per-tensor scale would be meaningless)."""
    scale = max(np.abs(v).max() for v in expected.values())
    assert scale > 0
    for name, value in expected.items():
        assert np.abs(ours[name] - value).max() <= rtol * scale, name


def model_params(algorithm) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in algorithm.params.items()}


@pytest.mark.parametrize("batching", ["vectorized", "loop", "reference"])
@pytest.mark.parametrize("name", ["maml", "anil"])
def test_mlp_meta_gradient_matches_independent_loop(batching, name):
    batch = regression_batch()
    algorithm = build(name, SINUSOID, inner_steps=2, batching=batching)
    expected = independent_maml_gradient(
        mlp_forward, model_params(algorithm), batch, F.mse_loss, 0.01, 2, head_only=name == "anil"
    )
    assert_close(meta_gradient(algorithm, batch), expected)


@pytest.mark.parametrize("batching", ["vectorized", "loop", "reference"])
def test_conv4_with_batch_norm_meta_gradient_matches_independent_loop(batching):
    batch = image_batch()
    algorithm = build("maml", IMAGES, inner_steps=2, batching=batching)
    expected = independent_maml_gradient(conv4_forward, model_params(algorithm), batch, F.cross_entropy, 0.1, 2)
    ours = meta_gradient(algorithm, batch)
    assert_close(ours, expected)
    # second-order terms matter here: the first-order gradient is clearly different
    first = meta_gradient(build("fomaml", IMAGES, inner_steps=2, batching=batching), batch)
    assert max(np.abs(first[k] - expected[k]).max() / np.abs(expected[k]).max() for k in expected) > 1e-4


def test_mlp_meta_gradient_matches_finite_differences():
    batch = regression_batch(tasks=2)
    algorithm = build("maml", SINUSOID, inner_steps=1)
    gradient = meta_gradient(algorithm, batch)
    rng = np.random.default_rng(1)
    direction = {k: rng.normal(size=v.shape) for k, v in gradient.items()}
    data = algorithm.episode_tensors(batch)

    def meta_loss(shift: float) -> float:
        params = {k: p.detach() + shift * torch.from_numpy(direction[k]) for k, p in algorithm.params.items()}
        losses = algorithm.map_tasks(
            algorithm._train_task, (params, {}), (data.support_x, data.support_y, data.query_x, data.query_y)
        )[0]
        return float(losses.mean())

    eps = 1e-5
    numeric = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = sum(float((gradient[k] * direction[k]).sum()) for k in gradient)
    assert abs(numeric - analytic) <= 1e-6 * abs(analytic)


def test_metasgd_rates_get_the_gradient_of_the_inner_step():
    batch = regression_batch()
    algorithm = build("metasgd", SINUSOID, inner_steps=1)
    gradient = meta_gradient(algorithm, batch)
    theta = {k: torch.from_numpy(v).requires_grad_() for k, v in model_params(algorithm).items()}
    rates = {k: torch.full_like(v, 0.01).requires_grad_() for k, v in theta.items()}
    total = 0.0
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = (
            torch.from_numpy(a[t]).double() for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        )
        grads = torch.autograd.grad(F.mse_loss(mlp_forward(theta, sx), sy), list(theta.values()), create_graph=True)
        fast = {k: theta[k] - rates[k] * g for k, g in zip(theta, grads, strict=True)}
        total = total + F.mse_loss(mlp_forward(fast, qx), qy) / batch.num_tasks
    expected = torch.autograd.grad(total, [*theta.values(), *rates.values()])
    names = [*theta, *(f"inner.{k}" for k in rates)]
    assert_close(gradient, {k: g.numpy() for k, g in zip(names, expected, strict=True)})

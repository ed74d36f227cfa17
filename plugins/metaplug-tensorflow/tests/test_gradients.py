"""Meta-gradients in float64: against finite differences, and the second-order term.

The two TensorFlow traps: assigning adapted weights to variables (or Keras
``set_weights``) inside the inner loop cuts the gradient through it, and a tensor
the inner tape does not watch silently gets a ``None`` gradient. Either would make
MAML's meta-gradient equal the first-order one (or fail); the Hessian test below
checks that the difference is exactly the second-order term.
"""

from __future__ import annotations

import numpy as np
import pytest

from metaplug_tensorflow.layout import to_shared

EPS = 1e-6


def meta_loss(algorithm, state, batch, steps):
    algorithm.load_state_dict(state)
    return float(np.mean(algorithm.evaluate(batch, steps=steps)["loss"]))


def directional_check(algorithm, gradient, batch, steps, prefixes=("model.",), directions=2):
    state = algorithm.state_dict()
    rng = np.random.default_rng(0)
    for _ in range(directions):
        d = {k: rng.normal(size=v.shape) for k, v in state.items() if k.startswith(prefixes)}
        plus = {**state, **{k: state[k] + EPS * d[k] for k in d}}
        minus = {**state, **{k: state[k] - EPS * d[k] for k in d}}
        numeric = (meta_loss(algorithm, plus, batch, steps) - meta_loss(algorithm, minus, batch, steps)) / (2 * EPS)
        analytic = sum(float(np.sum(gradient[k] * d[k])) for k in d)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    algorithm.load_state_dict(state)


@pytest.mark.parametrize(
    "data, name, lr",
    [
        ("sinusoid_batches", "maml", 0.05),
        ("image_batches", "maml", 0.3),
        ("sinusoid_batches", "metasgd", 0.05),
        ("image_batches", "anil", 0.3),
    ],
)
def test_meta_gradient_matches_finite_differences(request, make, grad, data, name, lr):
    spec, batches = request.getfixturevalue(data)
    algorithm = make(name, spec, inner_lr=lr, inner_steps=2, batching="loop")
    gradient = grad(algorithm, batches[0])
    prefixes = ("model.", "inner.") if name == "metasgd" else ("model.",)
    if name == "metasgd":
        assert all(np.abs(gradient[k]).max() > 0 for k in gradient if k.startswith("inner."))
    directional_check(algorithm, gradient, batches[0], steps=2, prefixes=prefixes)


@pytest.mark.parametrize("data, lr", [("sinusoid_batches", 0.05), ("image_batches", 0.3)])
def test_second_order_minus_first_order_is_the_hessian_term(request, make, grad, data, lr):
    """One inner step: g2 - g1 = -lr * H_s(theta) g1, with g1 = grad L_q(phi) the first-order
    meta-gradient and H_s v taken by central differences of the support gradient
    ``(theta - phi(theta)) / lr`` that ``adapt`` gives."""
    spec, batches = request.getfixturevalue(data)
    task = batches[0].task(0)
    second = make("maml", spec, inner_lr=lr, batching="vectorized")
    first = make("fomaml", spec, inner_lr=lr, batching="vectorized")
    g2, g1 = grad(second, task), grad(first, task)
    names = [f"model.{n}" for n in second.model.names]
    # the term is there (conv biases feed batch norm, which cancels them: no gradient at all)
    assert all(np.abs(g2[k] - g1[k]).max() > 1e-8 for k in names if not k.endswith("conv.bias"))

    state = second.state_dict()

    def support_gradient(delta_scale):
        shifted = {**state, **{k: state[k] + delta_scale * g1[k] for k in names}}
        second.load_state_dict(shifted)
        phi = second.adapt(task.support_x[0], task.support_y[0], steps=1).state
        return {k: (shifted[k] - to_shared(p.numpy())) / lr for k, p in zip(names, phi, strict=True)}

    h = 1e-5
    plus, minus = support_gradient(h), support_gradient(-h)
    for k in names:
        hessian_term = -lr * (plus[k] - minus[k]) / (2 * h)
        scale = np.abs(hessian_term).max()
        np.testing.assert_allclose(g2[k] - g1[k], hessian_term, rtol=1e-5, atol=1e-6 * scale + 1e-9, err_msg=k)

"""The inner rules ``inner-adam``/``inner-rmsprop`` and MAML++: meta-gradients against an
independent per-task ``torch.autograd.grad(create_graph=True)`` loop written here (float64),
the derivative-order and multi-step-loss schedules, state round trips, and learning."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_gradients import assert_close, conv4_forward, mlp_forward, model_params
from torch_helpers import IMAGES, SINUSOID, build, image_batch, meta_gradient, regression_batch

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import ConfigError
from metaplug.tasks import SinusoidSampler
from metaplug_torch.backend import Backend


def adam(p, g, state, lr, t, b1=0.9, b2=0.999, eps=1e-8):
    m, v = state
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    # sqrt with a zero derivative where v == 0 (conv biases before batch norm have g == 0)
    root = torch.where(v > 0, torch.where(v > 0, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))
    return p - lr * (m / (1 - b1**t)) / (root / math.sqrt(1 - b2**t) + eps), (m, v)


def rmsprop(p, g, state, lr, t, alpha=0.99, eps=1e-8):
    (v,) = state
    v = alpha * v + (1 - alpha) * g**2
    root = torch.where(v > 0, torch.where(v > 0, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))
    return p - lr * g / (root + eps), (v,)


def task_tensors(batch, t):
    sx, qx = (torch.from_numpy(a[t]).double() for a in (batch.support_x, batch.query_x))
    sy, qy = (torch.from_numpy(a[t]) for a in (batch.support_y, batch.query_y))
    if sy.is_floating_point():
        sy, qy = sy.double(), qy.double()
    return sx, sy, qx, qy


def independent_rule_gradient(forward, params, batch, loss, lr, steps, update, slots):
    """Second-order MAML with a stateful inner update, state fresh per task."""
    theta = {k: torch.from_numpy(v).double().requires_grad_() for k, v in params.items()}
    total = 0.0
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = task_tensors(batch, t)
        fast = dict(theta)
        state = {k: tuple(torch.zeros_like(p) for _ in range(slots)) for k, p in fast.items()}
        for step in range(1, steps + 1):
            grads = torch.autograd.grad(loss(forward(fast, sx), sy), list(fast.values()), create_graph=True)
            for (k, p), g in zip(list(fast.items()), grads, strict=True):
                fast[k], state[k] = update(p, g, state[k], lr, step)
        total = total + loss(forward(fast, qx), qy) / batch.num_tasks
    grads = torch.autograd.grad(total, list(theta.values()))
    return {k: g.numpy() for k, g in zip(theta, grads, strict=True)}


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
@pytest.mark.parametrize("rule", ["inner-adam", "inner-rmsprop"])
def test_stateful_rules_meta_gradient_matches_independent_loop(rule, batching):
    batch = regression_batch()
    algorithm = build("maml", SINUSOID, inner_steps=3, batching=batching, inner_rule=rule, inner_lr=0.01)
    update, slots = (adam, 2) if rule == "inner-adam" else (rmsprop, 1)
    expected = independent_rule_gradient(
        mlp_forward, model_params(algorithm), batch, F.mse_loss, 0.01, 3, update, slots
    )
    assert_close(meta_gradient(algorithm, batch), expected)


def test_inner_adam_second_order_through_moments_on_conv4_with_batch_norm():
    batch = image_batch()
    algorithm = build("maml", IMAGES, inner_steps=2, batching="loop", inner_rule="inner-adam", inner_lr=0.01)
    expected = independent_rule_gradient(
        conv4_forward, model_params(algorithm), batch, F.cross_entropy, 0.01, 2, adam, 2
    )
    ours = meta_gradient(algorithm, batch)
    assert all(np.isfinite(v).all() for v in ours.values())
    assert_close(ours, expected)
    first = meta_gradient(
        build("fomaml", IMAGES, inner_steps=2, batching="loop", inner_rule="inner-adam", inner_lr=0.01), batch
    )
    assert max(np.abs(first[k] - expected[k]).max() / np.abs(expected[k]).max() for k in expected) > 1e-4


def independent_mamlpp_gradient(params, batch, lr, steps, weights):
    """MAML++ with LSLR, per-step batch norm and the multi-step loss, second order."""
    norms = [k for k in params if ".norm." in k]
    adapted = [k for k in params if k not in norms]
    theta = {k: torch.from_numpy(v).double().requires_grad_() for k, v in params.items() if k in adapted}
    rates = {k: torch.full((steps,), lr, dtype=torch.float64, requires_grad=True) for k in adapted}
    bn = {k: torch.from_numpy(np.stack([params[k]] * steps)).double().requires_grad_() for k in norms}
    total = 0.0
    for t in range(batch.num_tasks):
        sx, sy, qx, qy = task_tensors(batch, t)
        fast = dict(theta)
        for step in range(steps):
            norm = {k: bn[k][step] for k in norms}
            grads = torch.autograd.grad(
                F.cross_entropy(conv4_forward({**fast, **norm}, sx), sy), list(fast.values()), create_graph=True
            )
            fast = {k: fast[k] - rates[k][step] * g for k, g in zip(fast, grads, strict=True)}
            if weights[step]:
                query_loss = F.cross_entropy(conv4_forward({**fast, **norm}, qx), qy)
                total = total + weights[step] * query_loss / batch.num_tasks
    leaves = {**{f"model.{k}": v for k, v in theta.items()}, **{f"lslr.{k}": v for k, v in rates.items()}}
    leaves.update({f"bn.{k}": v for k, v in bn.items()})
    grads = torch.autograd.grad(total, list(leaves.values()))
    return {k: g.numpy() for k, g in zip(leaves, grads, strict=True)}


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
def test_mamlpp_meta_gradient_matches_independent_loop(batching):
    batch = image_batch()
    algorithm = build("mamlpp", IMAGES, inner_steps=3, batching=batching, inner_lr=0.1)
    params = model_params(algorithm)
    expected = independent_mamlpp_gradient(params, batch, 0.1, 3, [1 / 3] * 3)
    ours = meta_gradient(algorithm, batch)
    ours = {(k if k.startswith(("lslr.", "bn.")) else f"model.{k}"): v for k, v in ours.items()}
    assert set(ours) == set(expected)  # the model's own batch norm is unused, so has no gradient
    assert_close(ours, expected)


def test_mamlpp_schedules_follow_the_meta_steps():
    algorithm = build(
        "mamlpp", SINUSOID, inner_steps=2, multi_step_loss_steps=2, first_order_steps=1, cosine_steps=2, lr=0.1
    )
    seen = []
    for _ in range(3):
        algorithm.meta_train_step(regression_batch())
        seen.append((list(algorithm._loss_weights), algorithm._second_order))
    assert seen == [([0.5, 0.5], False), ([0.25, 0.75], True), ([0.0, 1.0], True)]
    assert algorithm.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # the end of the cosine
    state = algorithm.state_dict()
    assert int(state["mamlpp.steps"]) == 3
    again = build(
        "mamlpp", SINUSOID, inner_steps=2, multi_step_loss_steps=2, first_order_steps=1, cosine_steps=2, lr=0.1
    )
    again.load_state_dict(state)
    batch = regression_batch(seed=4)
    assert again.meta_train_step(batch) == algorithm.meta_train_step(batch)


def test_cosine_annealing_refuses_a_scheduled_optimizer():
    with pytest.raises(ConfigError, match="cosine_annealing"):
        build("mamlpp", SINUSOID, optimizer_options={"decay_every": 10})
    build("mamlpp", SINUSOID, optimizer_options={"decay_every": 10}, cosine_annealing=False)


def test_stateful_rule_needs_both_methods():
    class Half:
        def init(self, params, lr):
            return {}

        def step(self, params, grads, learnables, lr):
            return dict(params)

        def init_state(self, params):
            return {}

    with pytest.raises(ConfigError, match="step_with_state"):
        build("maml", SINUSOID, rule=Half())


LEARNING = [
    ("mamlpp", {}),
    ("maml", {"inner_rule": "inner-adam", "inner_steps": 5}),
]


@pytest.mark.parametrize("name, options", LEARNING)
def test_adaptation_learns_the_sinusoid(name, options):
    """A short run: on the typical test task (the median; a few large-amplitude tasks dominate
    the mean after 300 meta-steps), adapting clearly beats not adapting."""
    sampler = SinusoidSampler("train", seed=0, shots=10, queries=10)
    algorithm = build(name, SINUSOID, dtype=torch.float32, lr=1e-3, **{"inner_lr": 0.01, **options})
    for _ in range(300):
        algorithm.meta_train_step(sampler.sample(25))
    result = algorithm.evaluate(SinusoidSampler("test", seed=1, shots=10, queries=10).sample(100))
    assert np.median(result["loss"]) < 0.75 * np.median(result["loss_before"])
    # float32 rounding alone moves this fraction by several points after 300 steps (maml with
    # inner Adam: 0.74 with stacked weights, 0.79 under vmap, 0.81 in a loop; 0.80-0.84 on
    # two other seeds for all three): most tasks improve, not a precise share
    assert np.mean(result["loss"] < result["loss_before"]) > 0.7


def test_mamlpp_without_batch_norm_adapts_every_weight():
    """The MLP has no batch norm: per-step batch norm changes nothing, every weight adapts;
    conv4's batch norm is per step and not adapted."""
    algorithm = build("mamlpp", SINUSOID)
    assert algorithm.adapted_names() == list(algorithm.model.names)
    assert not any(k.startswith("bn.") for k in algorithm.extra)
    images = build("mamlpp", IMAGES)
    assert not any(".norm." in n for n in images.adapted_names())
    assert {k for k in images.extra if k.startswith("bn.")} == {f"bn.{n}" for n in images.model.names if ".norm." in n}


@pytest.fixture(scope="module")
def omniglot():
    from metaplug.errors import DatasetError
    from metaplug.tasks.omniglot import OmniglotSampler

    try:
        sampler = functools.partial(OmniglotSampler, seed=0, ways=5, shots=1, queries=5)
        return sampler("train"), sampler("test").sample(100)
    except DatasetError as exc:  # the data lives outside the repository
        pytest.skip(f"Omniglot not available: {exc}")


@pytest.mark.slow
def test_omniglot_mamlpp_at_least_as_good_as_maml_on_the_same_budget(omniglot):
    """Real Omniglot 5-way 1-shot, 40 meta-steps of 4 tasks, 3 inner steps for both (measured:
    MAML++ 0.69, MAML 0.62, MAML with inner Adam 0.65; chance 0.2)."""
    train_sampler, test = omniglot
    options = {"inner_steps": 3, "test_inner_steps": 3, "lr": 3e-3, "dtype": torch.float32}
    runs = {
        "maml": ("maml", {"inner_lr": 0.4}),
        "mamlpp": ("mamlpp", {"inner_lr": 0.4}),
        "adam": ("maml", {"inner_lr": 0.01, "inner_rule": "inner-adam"}),
    }
    accuracy = {}
    for label, (name, extra) in runs.items():
        backend = Backend("cpu")
        backend.seed(0)
        model = backend.build_model(ModelSpec("conv4", (1, 28, 28), 5, {"filters": 32}))
        algorithm = build(name, train_sampler.spec, model=model, **options, **extra)
        for _ in range(40):
            algorithm.meta_train_step(train_sampler.sample(4))
        accuracy[label] = float(algorithm.evaluate(test)["accuracy"].mean())
    assert accuracy["mamlpp"] >= accuracy["maml"] > 0.4
    assert accuracy["adam"] > 0.4

"""Reptile as Nichol et al. 2018 ran it (github.com/openai/supervised-reptile): the inner
Adam of TF1 whose state persists across tasks, mini-batches drawn as ``_mini_batches``,
non-transductive evaluation, and the linearly annealed outer step size."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch_helpers import IMAGES, SINUSOID, build, image_batch, regression_batch

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec
from metaplug.contract.minibatches import draw_generator, mini_batches
from metaplug.errors import ConfigError, DatasetError
from metaplug.plugins.discovery import registry
from metaplug.tasks import SinusoidSampler
from metaplug_torch import optimizers
from metaplug_torch.algorithms.reptile import AdamState, adam_step
from metaplug_torch.backend import Backend


def numpy_adam(p, grads, lr, b1, b2, eps):
    """TF1's AdamOptimizer over a list of gradients, written out with numpy in float64."""
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        out.append(p)
    return out


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adam_step_is_tf1_adam(beta1):
    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=(3, 2)), [rng.normal(size=(3, 2)) for _ in range(4)]
    expected = numpy_adam(p0, grads, 0.01, beta1, 0.999, 1e-8)
    params = {"w": torch.tensor(p0)}
    state = AdamState({"w": torch.zeros(3, 2, dtype=torch.float64)}, {"w": torch.zeros(3, 2, dtype=torch.float64)}, 0)
    for t, (g, want) in enumerate(zip(grads, expected, strict=True), start=1):
        params, state = adam_step(params, {"w": torch.tensor(g)}, state, 0.01, beta1, 0.999, 1e-8)
        assert state.t == t
        np.testing.assert_allclose(params["w"].numpy(), want, rtol=1e-13, atol=1e-15)


def test_training_draws_each_task_from_its_own_counter():
    reptile = build("reptile", SINUSOID, optimizer="sgd", lr=0.1, inner_batch_size=2, test_inner_batch_size=3)
    seed = torch.initial_seed()
    assert reptile.batches.seed == seed
    first = reptile.draws(0, 3, 4, 5)
    second = reptile.draws(0, 2, 4, 5)
    assert reptile.batches.drawn == [5, 0]
    assert first.shape == (3, 4, 2) and second.shape == (2, 4, 2)
    for k, rows in enumerate([*first, *second]):
        np.testing.assert_array_equal(rows.numpy(), mini_batches(draw_generator(seed, 0, k), 5, 2, 4))
    evaluation = reptile.draws(1, 1, 6, 5)
    np.testing.assert_array_equal(evaluation[0].numpy(), mini_batches(draw_generator(seed, 1, 0), 5, 3, 6))


def adam_reptile(spec=SINUSOID, **options):
    return build("reptile", spec, optimizer="sgd", lr=1.0, inner_optimizer="adam", inner_lr=0.01, **options)


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
def test_adam_state_runs_through_the_tasks_in_order_and_evaluation_leaves_it(batching):
    batch = regression_batch(tasks=3, shots=6)
    reptile = adam_reptile(batching=batching)
    start = {n: p.detach().clone() for n, p in reptile.params.items()}
    reptile.meta_train_step(batch)
    assert reptile.inner_adam.t == 3 * reptile.options.inner_steps

    # the same three tasks by hand, one after another, each continuing the Adam state
    manual = adam_reptile(batching=batching)
    state, adapted = manual.inner_adam, []
    for i in range(3):
        sx, sy = (torch.from_numpy(a[i]).double() for a in (batch.support_x, batch.support_y))
        fast, state = manual.adapt_with(start, sx, sy, manual.options.inner_steps, None, state)
        adapted.append(fast)
    for n, p in reptile.params.items():
        expected = start[n] - (start[n] - torch.stack([f[n] for f in adapted]).mean(0))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reptile.inner_adam.m, state.m)
    torch.testing.assert_close(reptile.inner_adam.v, state.v)

    # evaluation: every task starts from the training state and leaves it as it was
    before = reptile.state_dict()
    test = regression_batch(tasks=2, shots=6, seed=5)
    one = reptile.evaluate(test)
    reptile.adapt(test.support_x[0], test.support_y[0])
    two = reptile.evaluate(test)
    after = reptile.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    np.testing.assert_array_equal(one["loss"], two["loss"])
    task1 = EpisodeBatch(test.support_x[1:], test.support_y[1:], test.query_x[1:], test.query_y[1:], "regression")
    alone = reptile.evaluate(task1)  # the second task alone starts from the same state
    np.testing.assert_allclose(alone["loss"][0], one["loss"][1], rtol=1e-12)


def test_adam_with_mini_batches_resumes_bit_for_bit(tmp_path):
    data = [image_batch(tasks=2, shots=3, seed=i) for i in range(4)]
    options = {"inner_batch_size": 4, "test_inner_batch_size": 2, "transductive": False, "optimizer": "sgd", "lr": 1.0}

    straight = build("reptile", IMAGES, inner_optimizer="adam", inner_lr=1e-3, **options)
    for batch in data:
        straight.meta_train_step(batch)
        straight.evaluate(data[0])
    first = build("reptile", IMAGES, inner_optimizer="adam", inner_lr=1e-3, **options)
    for batch in data[:2]:
        first.meta_train_step(batch)
        first.evaluate(data[0])
    np.savez(tmp_path / "state.npz", **first.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as saved:
        state = {k: saved[k] for k in saved.files}
    assert {"inner_adam.t", "inner_adam.m.head.weight", "inner_batches.seed", "inner_batches.train"} <= state.keys()
    torch.manual_seed(99)  # another run seed: the saved draw seed wins
    resumed = build("reptile", IMAGES, seed=123, inner_optimizer="adam", inner_lr=1e-3, **options)
    resumed.load_state_dict(state)
    for batch in data[2:]:
        resumed.meta_train_step(batch)
        resumed.evaluate(data[0])
    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    np.testing.assert_array_equal(resumed.evaluate(data[1])["loss"], straight.evaluate(data[1])["loss"])
    with pytest.raises(ConfigError, match="no entry 'inner_adam"):
        without_adam = {k: v for k, v in state.items() if not k.startswith("inner_adam.")}
        build("reptile", IMAGES, inner_optimizer="adam", inner_lr=1e-3, **options).load_state_dict(without_adam)


@pytest.mark.parametrize("name", ["reptile", "maml", "anil"])
def test_non_transductive_predictions_are_one_pass_per_query_with_the_support_set(name):
    batch = image_batch(tasks=1, ways=3, shots=2, queries=3)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    options = {"test_inner_steps": 2}
    transductive = build(name, IMAGES, **options).adapt(sx, sy)
    algorithm = build(name, IMAGES, transductive=False, **options)
    adapted = algorithm.adapt(sx, sy)
    expected = np.stack([transductive.predict(np.concatenate([sx, qx[j : j + 1]]))[-1] for j in range(len(qx))])
    np.testing.assert_allclose(adapted.predict(qx), expected, rtol=1e-12)
    assert not np.allclose(transductive.predict(qx), expected)  # batch norm sees other statistics

    # evaluate scores the same predictions
    logits = torch.from_numpy(expected)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch.query_y[0]))
    np.testing.assert_allclose(algorithm.evaluate(batch)["loss"][0], float(loss), rtol=1e-10)


def test_new_options_are_checked():
    for options, message in [
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer must be one of sgd, adam"),
        ({"inner_batch_size": 0}, "inner_batch_size must be at least 1, got 0"),
        ({"test_inner_batch_size": 2.5}, "test_inner_batch_size must be an integer"),
        ({"adam_beta1": 1.0}, r"adam_beta1 must be in \[0, 1\), got 1.0"),
        ({"adam_beta2": -0.1}, "adam_beta2"),
        ({"adam_epsilon": 0}, "adam_epsilon"),
        ({"transductive": "no"}, "transductive must be true or false, got 'no'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build("reptile", SINUSOID, **options)
    default = build("reptile", SINUSOID).state_dict()
    assert not any(k.startswith(("inner_adam.", "inner_batches.")) for k in default)


def test_linear_annealing_schedule_and_resume():
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = optimizers.SGD(params, lr=1.0, final_lr=0.0, anneal_steps=4)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        params[0].grad = torch.ones(2)
        optimizer.step()
    assert seen == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]

    lrs = []
    for resume_at in (None, 3):
        p = [torch.nn.Parameter(torch.ones(2))]
        opt = optimizers.Adam(p, lr=0.1, final_lr=0.02, anneal_steps=5)
        for i in range(7):
            if i == resume_at:
                state = optimizers.optimizer_state(opt)
                p = [torch.nn.Parameter(p[0].detach().clone())]
                opt = optimizers.Adam(p, lr=0.1, final_lr=0.02, anneal_steps=5)
                optimizers.load_optimizer_state(opt, state)
            p[0].grad = torch.full((2,), float(i + 1))
            opt.step()
        lrs.append((opt.param_groups[0]["lr"], p[0].detach().numpy().copy()))
    assert lrs[0][0] == lrs[1][0] == pytest.approx(0.02)
    np.testing.assert_array_equal(lrs[0][1], lrs[1][1])
    expected = [min(i / 5, 1) * 0.02 + (1 - min(i / 5, 1)) * 0.1 for i in range(7)]
    opt = optimizers.RMSprop([torch.nn.Parameter(torch.ones(1))], lr=0.1, final_lr=0.02, anneal_steps=5)
    got = []
    for _ in range(7):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
    assert got == expected


def test_annealing_options_are_checked():
    params = [torch.nn.Parameter(torch.ones(1))]
    with pytest.raises(ConfigError, match="anneal_steps must be at least 1 with final_lr, got 0"):
        optimizers.SGD(params, lr=1.0, final_lr=0.0)
    with pytest.raises(ConfigError, match="cannot be combined"):
        optimizers.Adam(params, lr=1.0, final_lr=0.0, anneal_steps=10, decay_every=5)
    with pytest.raises(ConfigError, match="final_lr must be at least 0, got -1.0"):
        optimizers.RMSprop(params, lr=1.0, final_lr=-1.0, anneal_steps=10)
    with pytest.raises(ConfigError, match="anneal_steps .* needs final_lr"):
        optimizers.SGD(params, lr=1.0, anneal_steps=10)


def published_reptile(sampler, steps, **options):
    """Reptile with Adam (beta1 = 0) on mini-batches, the outer SGD step 1.0 annealed to 0
    over ``steps`` meta-batches of 5 tasks, and non-transductive evaluation."""
    backend = Backend("cpu")
    backend.seed(0)
    spec = sampler.spec
    model = backend.build_model(
        ModelSpec(
            spec.default_model,
            spec.input_shape,
            spec.output_size,
            {"filters": 32} if spec.default_model == "conv4" else {},
        )
    )
    reptile = registry().load("algorithms", "reptile", backend="torch")(
        backend=backend,
        model=model,
        spec=spec,
        optimizer=functools.partial(optimizers.SGD, lr=1.0, final_lr=0.0, anneal_steps=steps),
        inner_optimizer="adam",
        inner_steps=5,
        transductive=False,
        **options,
    )
    for _ in range(steps):
        reptile.meta_train_step(sampler.sample(5))
    return reptile


def test_published_reptile_beats_chance_on_omniglot_5way_1shot():
    from metaplug.tasks.omniglot import OmniglotSampler

    try:
        train = OmniglotSampler("train", seed=0, ways=5, shots=5, queries=1)
        test = OmniglotSampler("test", seed=0, ways=5, shots=1, queries=5).sample(40)
    except DatasetError as exc:  # the data lives outside the repository
        pytest.skip(f"Omniglot not available: {exc}")
    reptile = published_reptile(
        train, 30, inner_lr=1e-3, inner_batch_size=10, test_inner_steps=5, test_inner_batch_size=5
    )
    assert reptile.evaluate(test)["accuracy"].mean() > 0.4  # chance is 0.2 (0.61 when written)


def test_published_reptile_learns_sinusoids():
    reptile = published_reptile(
        SinusoidSampler("train", 0, shots=10),
        150,
        inner_lr=0.01,
        inner_batch_size=5,
        test_inner_steps=20,
        test_inner_batch_size=5,
    )
    result = reptile.evaluate(SinusoidSampler("test", 0, shots=10).sample(100))
    assert result["loss"].mean() < 0.6 * result["loss_before"].mean()

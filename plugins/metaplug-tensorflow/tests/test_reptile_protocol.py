"""Reptile as Nichol et al. 2018 ran it (github.com/openai/supervised-reptile): TF1's Adam
in the inner loop, its state carried from task to task, mini-batches drawn as
``_mini_batches``, non-transductive evaluation, and the outer step annealed linearly.
The references here are written out in numpy and eager TensorFlow, one task at a time."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from metaplug.contract.minibatches import draw_generator, mini_batches
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.losses import task_loss
from metaplug_tensorflow.optimizers import SGD, Adam, RMSprop

PROTOCOL = {
    "inner_optimizer": "adam",
    "inner_steps": 3,
    "inner_batch_size": 4,
    "test_inner_steps": 4,
    "test_inner_batch_size": 3,
    "transductive": False,
    "inner_lr": 0.02,
}
ANNEALED = functools.partial(SGD, lr=1.0, final_lr=0.0, anneal_steps=3)


def numpy_adam(p, grads, lr, b1, b2, eps):
    """TF1's AdamOptimizer over a list of gradients, in numpy (float64)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        p = p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return p, m, v


@pytest.mark.parametrize("beta1, beta2, eps", [(0.0, 0.999, 1e-8), (0.9, 0.99, 1e-3)])
def test_inner_adam_is_tf1_adam(make, sinusoid_batches, beta1, beta2, eps):
    spec, _ = sinusoid_batches
    reptile = make(
        "reptile", spec, inner_optimizer="adam", inner_lr=0.01, adam_beta1=beta1, adam_beta2=beta2, adam_epsilon=eps
    )
    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=(3, 2)), [rng.normal(size=(3, 2)) for _ in range(5)]
    params, state = (
        [tf.constant(p0)],
        ([tf.zeros([3, 2], tf.float64)], [tf.zeros([3, 2], tf.float64)], tf.constant(0, tf.int64)),
    )
    for g in grads:
        params, state = reptile.adam_step(params, [tf.constant(g)], state)
    p, m, v = numpy_adam(p0, grads, 0.01, beta1, beta2, eps)
    np.testing.assert_allclose(params[0].numpy(), p, rtol=1e-12)
    np.testing.assert_allclose(state[0][0].numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(state[1][0].numpy(), v, rtol=1e-12)
    assert int(state[2]) == len(grads)


class ReferenceReptile:
    """supervised-reptile's ``train_step`` and ``evaluate`` written out eagerly: one task after
    another, the Adam state (m, v, t) never reset by training, restored after evaluation."""

    def __init__(self, algorithm):
        self.alg = algorithm
        self.theta = [v.numpy() for v in algorithm.model.variables]
        self.m = [np.zeros_like(w) for w in self.theta]
        self.v = [np.zeros_like(w) for w in self.theta]
        self.t = 0
        self.drawn = [0, 0]

    def gradients(self, weights, x, y):
        weights = [tf.constant(w) for w in weights]
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = task_loss(self.alg.problem, self.alg.model(weights, x[None]), y[None])[0]
        return [g.numpy() for g in tape.gradient(loss, weights)]

    def inner(self, x, y, steps, batch_size, stream):
        rng = draw_generator(self.alg.batches.seed, stream, self.drawn[stream])
        self.drawn[stream] += 1
        options = self.alg.options
        weights, b1, b2, eps, lr = (
            list(self.theta),
            options.adam_beta1,
            options.adam_beta2,
            options.adam_epsilon,
            options.inner_lr,
        )
        for batch in mini_batches(rng, len(x), batch_size, steps):
            grads = self.gradients(weights, tf.gather(x, batch), tf.gather(y, batch))
            self.t += 1
            rate = lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
            self.m = [b1 * m + (1 - b1) * g for m, g in zip(self.m, grads, strict=True)]
            self.v = [b2 * v + (1 - b2) * g * g for v, g in zip(self.v, grads, strict=True)]
            weights = [w - rate * m / (np.sqrt(v) + eps) for w, m, v in zip(weights, self.m, self.v, strict=True)]
        return weights

    def train_step(self, batch, meta_step_size):
        e = self.alg.backend.to_tensors(batch)
        options = self.alg.options
        new = [
            self.inner(e.support_x[i], e.support_y[i], options.inner_steps, options.inner_batch_size, 0)
            for i in range(len(batch.support_x))
        ]
        mean = [np.mean(ws, axis=0) for ws in zip(*new, strict=True)]
        self.theta = [old + meta_step_size * (n - old) for old, n in zip(self.theta, mean, strict=True)]

    def adapt(self, support_x, support_y):
        saved = (list(self.m), list(self.v), self.t)
        e = self.alg.backend
        x, y = e.inputs(support_x[None], len(support_x.shape) - 1)[0], e.targets(support_y[None], self.alg.problem)[0]
        options = self.alg.options
        weights = self.inner(x, y, options.evaluation_steps, options.evaluation_batch_size, 1)
        self.m, self.v, self.t = saved
        return weights


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
def test_adam_state_runs_through_the_tasks_in_order_and_evaluation_leaves_it(make, sinusoid_batches, batching):
    spec, batches = sinusoid_batches
    reptile = make("reptile", spec, optimizer=ANNEALED, batching=batching, **PROTOCOL)
    reference = ReferenceReptile(reptile)
    for number, batch in enumerate(batches[:3]):
        reptile.meta_train_step(batch)
        reference.train_step(batch, 1.0 - number / 3)
        state = reptile.state_dict()
        for i, name in enumerate(reptile.model.names):
            for key, expected in (
                (f"model.{name}", reference.theta[i]),
                (f"inner_adam.m.{name}", reference.m[i]),
                (f"inner_adam.v.{name}", reference.v[i]),
            ):
                np.testing.assert_allclose(
                    state[key], expected.T if expected.ndim == 2 else expected, rtol=1e-10, atol=1e-14, err_msg=key
                )
        assert int(state["inner_adam.t"]) == reference.t == (number + 1) * 3 * PROTOCOL["inner_steps"]

    before = reptile.state_dict()
    batch = batches[3]
    results = [reptile.evaluate(batch) for _ in range(2)]  # mini-batches differ: draws go on
    assert not np.array_equal(results[0]["loss"], results[1]["loss"])
    adapted = reptile.adapt(batch.support_x[0], batch.support_y[0])
    reference.drawn[1] = 2 * len(batch.support_x)  # the two evaluations above
    expected = reference.adapt(batch.support_x[0], batch.support_y[0])
    for got, want in zip(adapted.state[: len(expected)], expected, strict=True):  # then the support set
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-14)
    after = reptile.state_dict()
    assert int(after["inner_batches.eval"]) == 2 * len(batch.support_x) + 1
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "inner_batches.eval")


def test_every_evaluated_task_starts_from_the_trained_state(make, sinusoid_batches):
    spec, batches = sinusoid_batches
    options = {**PROTOCOL, "test_inner_batch_size": None, "inner_batch_size": None}  # no draws: repeatable
    reptile = make("reptile", spec, batching="loop", **options)
    for batch in batches[:2]:
        reptile.meta_train_step(batch)
    first, again = reptile.evaluate(batches[3]), reptile.evaluate(batches[3])
    assert all(np.array_equal(first[k], again[k]) for k in first)
    fresh = make("reptile", spec, batching="loop", **options)  # same weights, Adam state at zero
    fresh.load_state_dict(
        {
            **reptile.state_dict(),
            **{k: np.zeros_like(v) for k, v in reptile.state_dict().items() if k.startswith("inner_adam.")},
        }
    )
    assert not np.allclose(fresh.evaluate(batches[3])["loss"], first["loss"])


def test_adam_with_mini_batches_resumes_bit_for_bit(make, image_batches, tmp_path):
    spec, batches = image_batches
    original = make("reptile", spec, dtype="float32", optimizer=ANNEALED, **PROTOCOL)
    for batch in batches[:2]:
        original.meta_train_step(batch)
    original.evaluate(batches[0])
    np.savez(tmp_path / "state.npz", **original.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as stored:
        state = dict(stored)
    assert {k for k in state if k.startswith("inner_batches.")} == {
        "inner_batches.seed",
        "inner_batches.train",
        "inner_batches.eval",
    }
    assert int(state["optimizer.steps"]) == 2 and int(state["inner_adam.t"]) == 2 * 3 * PROTOCOL["inner_steps"]

    resumed = make("reptile", spec, dtype="float32", seed=99, optimizer=ANNEALED, **PROTOCOL)
    resumed.load_state_dict(state)
    for batch in batches[2:] + batches[:2]:
        assert original.meta_train_step(batch) == resumed.meta_train_step(batch)
        a, b = original.evaluate(batch), resumed.evaluate(batch)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    a, b = original.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert original._train_fn.experimental_get_tracing_count() == 1
    assert original._evaluate_fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "name, data, batching",
    [
        ("reptile", "image_batches", "loop"),
        ("reptile", "image_batches", "vectorized"),
        ("maml", "image_batches", "loop"),
        ("anil", "image_batches", "vectorized"),
        ("metasgd", "sinusoid_batches", "vectorized"),
    ],
)
def test_non_transductive_predictions_are_one_pass_per_query_with_the_support_set(request, make, name, data, batching):
    spec, batches = request.getfixturevalue(data)
    hyper = {"inner_lr": 0.1, "test_inner_steps": 2, "batching": batching}
    algorithm = make(name, spec, transductive=False, **hyper)
    batch = batches[0]
    result = algorithm.evaluate(batch)
    backend, rank = algorithm.backend, len(spec.input_shape)
    for task in range(len(batch.support_x)):
        sx, qx = batch.support_x[task], batch.query_x[task]
        adapted = algorithm.adapt(sx, batch.support_y[task])
        weights = adapted.state[: len(algorithm.model.names)]
        rows, before = [], []
        for j in range(len(qx)):
            x = backend.inputs(np.concatenate([sx, qx[j : j + 1]])[None], rank)
            rows.append(algorithm.model(weights, x)[0, -1].numpy())
            before.append(algorithm.model(algorithm.model.variables, x)[0, -1].numpy())
        np.testing.assert_allclose(adapted.predict(qx), rows, rtol=1e-10, atol=1e-12)
        for key, outputs in (("loss", rows), ("loss_before", before)):
            loss = task_loss(
                spec.problem,
                tf.constant(np.array(outputs)[None]),
                backend.targets(batch.query_y[task][None], spec.problem),
            )[0]
            np.testing.assert_allclose(result[key][task], loss.numpy(), rtol=1e-10)
    if spec.problem == "classification":  # batch norm over the queries gives other numbers
        transductive = make(name, spec, **hyper).evaluate(batch)
        assert not np.allclose(transductive["loss"], result["loss"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer must be one of sgd, adam, got 'rmsprop'"),
        ({"inner_batch_size": 0}, "inner_batch_size must be at least 1, got 0"),
        ({"test_inner_batch_size": 2.5}, "test_inner_batch_size must be an integer, got 2.5"),
        ({"adam_beta1": 1.0}, r"adam_beta1 must be in \[0, 1\), got 1.0"),
        ({"adam_beta2": -0.1}, r"adam_beta2 must be in \[0, 1\), got -0.1"),
        ({"adam_epsilon": 0}, "adam_epsilon must be greater than 0, got 0$"),
        ({"transductive": "no"}, "transductive must be true or false"),
    ],
)
def test_new_options_are_checked(make, sinusoid_batches, options, message):
    spec, _ = sinusoid_batches
    with pytest.raises(ConfigError, match=message) as error:
        make("reptile", spec, **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("factory", [SGD, Adam, RMSprop])
def test_linear_annealing_rates_and_resume(factory):
    opt = factory([tf.Variable(0.0)], lr=1.0, final_lr=0.1, anneal_steps=4)
    rates = []
    for i in range(6):
        rates.append(float(opt.learning_rate()))
        opt.apply([tf.constant(1.0)])
        if i == 2:  # a resumed optimizer continues the schedule exactly
            resumed = factory([tf.Variable(0.0)], lr=1.0, final_lr=0.1, anneal_steps=4)
            resumed.load_state_dict(opt.state_dict())
            opt = resumed
    expected = [min(i / 4, 1) * 0.1 + (1 - min(i / 4, 1)) * 1.0 for i in range(6)]  # supervised-reptile's train.py
    assert rates == expected
    assert rates[-2:] == [0.1, 0.1]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"final_lr": 0.0}, "anneal_steps must be at least 1 with final_lr, got 0"),
        ({"anneal_steps": 5}, "anneal_steps \\(5\\) needs final_lr"),
        ({"final_lr": 0.0, "anneal_steps": 5, "decay_every": 2}, "cannot be combined"),
        ({"final_lr": -1.0, "anneal_steps": 5}, "final_lr must be at least 0, got -1.0"),
        ({"final_lr": 0.0, "anneal_steps": 1.5}, "anneal_steps must be an integer, got 1.5"),
    ],
)
def test_annealing_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        SGD([tf.Variable(1.0)], lr=0.1, **options)

"""Outer optimizers against the textbook update rules (written here in numpy), schedules and
state round trips; inner rules."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.inner import InnerMetaSGD, InnerSGD
from metaplug_tensorflow.optimizers import adam, rmsprop, sgd

STEPS = 7


def numpy_run(rule: str, p: np.ndarray, grads: list[np.ndarray], lr: float, decay_every: int = 0,
              decay_rate: float = 0.5, **o: float) -> np.ndarray:
    """Textbook updates (PyTorch's documented algorithms), one per gradient."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        rate = lr * decay_rate ** ((t - 1) // decay_every) if decay_every else lr
        g = g + o.get("weight_decay", 0.0) * p
        if rule == "sgd":
            mom = o.get("momentum", 0.0)
            if mom:
                m = mom * m + g if t > 1 else g
                g = g + mom * m if o.get("nesterov") else m
            p = p - rate * g
        elif rule == "adam":
            b1, b2 = o.get("betas", (0.9, 0.999))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - rate * m_hat / (np.sqrt(v_hat) + o.get("eps", 1e-8))
        elif rule == "rmsprop":
            alpha, eps, mom = o.get("alpha", 0.99), o.get("eps", 1e-8), o.get("momentum", 0.0)
            v = alpha * v + (1 - alpha) * g * g
            step = g / (np.sqrt(v) + eps)
            if mom:
                m = mom * m + step
                step = m
            p = p - rate * step
    return p


CASES = [
    ("sgd", sgd, {}),
    ("sgd", sgd, {"momentum": 0.9}),
    ("sgd", sgd, {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    ("adam", adam, {}),
    ("adam", adam, {"betas": (0.5, 0.9), "eps": 1e-3, "decay_every": 3, "decay_rate": 0.1}),
    ("rmsprop", rmsprop, {}),
    ("rmsprop", rmsprop, {"alpha": 0.9, "momentum": 0.5, "decay_every": 2}),
]


@pytest.mark.parametrize("rule, factory, options", CASES)
def test_updates_match_textbook_rules(rule, factory, options):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(STEPS)]
    var = tf.Variable(start, dtype=tf.float64)
    opt = factory([var], lr=0.05, **options)
    step = tf.function(lambda g: opt.apply([g]))
    for g in grads:
        step(tf.constant(g))
    np.testing.assert_allclose(var.numpy(), numpy_run(rule, start, grads, 0.05, **options), rtol=1e-12)
    assert int(opt.steps.numpy()) == STEPS


@pytest.mark.parametrize("rule, factory, options", CASES[2:5])
def test_state_round_trip_continues_exactly(rule, factory, options):
    rng = np.random.default_rng(1)
    grads = [tf.constant(rng.normal(size=5)) for _ in range(6)]
    a, b = tf.Variable(np.ones(5)), tf.Variable(np.ones(5))
    opt_a, opt_b = factory([a], lr=0.1, **options), factory([b], lr=0.1, **options)
    for g in grads[:3]:
        opt_a.apply([g])
    state = opt_a.state_dict()
    assert all(isinstance(x, np.ndarray) for v in state.values() for x in (v if isinstance(v, list) else [v]))
    b.assign(a)
    opt_b.load_state_dict(state)
    for g in grads[3:]:
        opt_a.apply([g])
        opt_b.apply([g])
    assert np.array_equal(a.numpy(), b.numpy())


def test_schedule_decays_every_n_steps():
    opt = sgd([tf.Variable(0.0)], lr=1.0, decay_every=2, decay_rate=0.5)
    rates = []
    for _ in range(5):
        rates.append(float(opt.learning_rate()))
        opt.apply([tf.constant(0.0)])
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("factory, options, message", [
    (sgd, {"lr": 0.0}, "learning rate"),
    (sgd, {"lr": 0.1, "nesterov": True}, "nesterov"),
    (adam, {"lr": 0.1, "betas": (1.0, 0.9)}, "betas"),
    (rmsprop, {"lr": 0.1, "decay_every": -1}, "decay_every"),
    (adam, {"lr": 0.1, "beta1": 0.9}, "bad option"),
])
def test_bad_options_raise_config_errors(factory, options, message):
    with pytest.raises(ConfigError, match=message):
        factory([tf.Variable(1.0)], **options)


def test_inner_rules():
    params = [tf.Variable([[1.0, 2.0]]), tf.Variable([3.0])]
    sgd_rule = InnerSGD()
    assert sgd_rule.init(params, 0.5) == []
    stepped = sgd_rule.step([tf.stack([p, p]) for p in params], [tf.ones([2, 1, 2]), tf.ones([2, 1])], [])
    np.testing.assert_allclose(stepped[0].numpy(), [[[0.5, 1.5]]] * 2)
    meta = InnerMetaSGD()
    rates = meta.init(params, 0.1)
    assert [r.shape for r in rates] == [p.shape for p in params]
    rates[1].assign([0.25])
    stepped = meta.step([tf.stack([p, p]) for p in params], [tf.ones([2, 1, 2]), 2 * tf.ones([2, 1])], rates)
    np.testing.assert_allclose(stepped[0].numpy(), [[[0.9, 1.9]]] * 2, rtol=1e-6)
    np.testing.assert_allclose(stepped[1].numpy(), [[2.5]] * 2)

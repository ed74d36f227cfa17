"""Outer optimizers against the textbook update rules (written here in numpy) and against
``torch.optim`` when torch is installed, schedules and state round trips; inner rules."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.inner import BUILTIN_RULES, InnerMetaSGD, InnerSGD, resolve_rule
from metaplug_tensorflow.optimizers import SGD, Adam, RMSprop

STEPS = 7


def numpy_run(
    rule: str,
    p: np.ndarray,
    grads: list[np.ndarray],
    lr: float,
    decay_every: int = 0,
    decay_rate: float = 0.5,
    **o: float,
) -> np.ndarray:
    """Textbook updates (PyTorch's documented algorithms), one per gradient."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    peak = np.zeros_like(p)
    mean = np.zeros_like(p)
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
            peak = np.maximum(peak, v)
            m_hat, v_hat = m / (1 - b1**t), (peak if o.get("amsgrad") else v) / (1 - b2**t)
            p = p - rate * m_hat / (np.sqrt(v_hat) + o.get("eps", 1e-8))
        elif rule == "rmsprop":
            alpha, eps, mom = o.get("alpha", 0.99), o.get("eps", 1e-8), o.get("momentum", 0.0)
            v = alpha * v + (1 - alpha) * g * g
            mean = alpha * mean + (1 - alpha) * g
            step = g / (np.sqrt(v - mean * mean if o.get("centered") else v) + eps)
            if mom:
                m = mom * m + step
                step = m
            p = p - rate * step
    return p


CASES = [
    ("sgd", SGD, {}),
    ("sgd", SGD, {"momentum": 0.9}),
    ("sgd", SGD, {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    ("adam", Adam, {}),
    ("adam", Adam, {"betas": (0.5, 0.9), "eps": 1e-3, "decay_every": 3, "decay_rate": 0.1}),
    ("adam", Adam, {"amsgrad": True, "weight_decay": 0.05}),
    ("rmsprop", RMSprop, {}),
    ("rmsprop", RMSprop, {"alpha": 0.9, "momentum": 0.5, "decay_every": 2}),
    ("rmsprop", RMSprop, {"alpha": 0.9, "centered": True, "momentum": 0.3, "weight_decay": 0.1}),
]


def random_run(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, 4)), [rng.normal(size=(3, 4)) for _ in range(STEPS)]


@pytest.mark.parametrize("rule, cls, options", CASES)
def test_updates_match_textbook_rules(rule, cls, options):
    start, grads = random_run()
    var = tf.Variable(start, dtype=tf.float64)
    opt = cls([var], lr=0.05, **options)
    step = tf.function(lambda g: opt.apply([g]))
    for g in grads:
        opt.schedule()  # a compiled step reads the rate the schedule sets
        step(tf.constant(g))
    np.testing.assert_allclose(var.numpy(), numpy_run(rule, start, grads, 0.05, **options), rtol=1e-12)
    assert int(opt.steps.numpy()) == STEPS


@pytest.mark.parametrize("rule, cls, options", [case for case in CASES if "decay_every" not in case[2]])
def test_updates_match_torch_optim(rule, cls, options):
    """The same options give ``torch.optim``'s numbers (float64, constant rate)."""
    torch = pytest.importorskip("torch")
    start, grads = random_run(1)
    var = tf.Variable(start, dtype=tf.float64)
    opt = cls([var], lr=0.05, **options)
    param = torch.nn.Parameter(torch.tensor(start))
    reference = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[rule](
        [param], lr=0.05, foreach=False, **options
    )
    for g in grads:
        opt.apply([tf.constant(g)])
        param.grad = torch.tensor(g)
        reference.step()
        np.testing.assert_allclose(var.numpy(), param.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert set(opt.slots) == set(reference.state[param]) - {"step"}


@pytest.mark.parametrize("rule, cls, options", CASES[2:6] + CASES[8:])
def test_state_round_trip_continues_exactly(rule, cls, options):
    rng = np.random.default_rng(1)
    grads = [tf.constant(rng.normal(size=5)) for _ in range(6)]
    a, b = tf.Variable(np.ones(5)), tf.Variable(np.ones(5))
    opt_a, opt_b = cls([a], lr=0.1, **options), cls([b], lr=0.1, **options)
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
    opt = SGD([tf.Variable(0.0)], lr=1.0, decay_every=2, decay_rate=0.5)
    rates = []
    for _ in range(5):
        rates.append(opt.learning_rate())
        opt.apply([tf.constant(0.0)])
        assert float(opt.rate.numpy()) == rates[-1]  # the rate the step used
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (SGD, {"lr": 0}, "lr must be greater than 0, got 0$"),
        (SGD, {"lr": 0.1, "nesterov": True}, "nesterov needs a positive momentum"),
        (Adam, {"lr": 0.1, "betas": (1.0, 0.9)}, r"betas must be in \[0, 1\), got 1.0"),
        (Adam, {"lr": 0.1, "amsgrad": "yes"}, "amsgrad must be true or false, got 'yes'"),
        (RMSprop, {"lr": 0.1, "decay_every": -1}, "decay_every must be at least 0, got -1"),
    ],
)
def test_bad_options_raise_config_errors(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls([tf.Variable(1.0)], **options)


def test_an_unknown_option_is_one_line_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"optimizer Adam has no option 'beta1'\. Did you mean 'betas'\?"):
        Adam([tf.Variable(1.0)], lr=0.1, beta1=0.9)


def test_inner_rules():
    params = {"w": tf.Variable([[1.0, 2.0]]), "b": tf.Variable([3.0])}
    tiled = {n: tf.stack([p, p]) for n, p in params.items()}  # a task axis of 2
    sgd_rule = InnerSGD()
    assert sgd_rule.init(params, 0.5) == {}
    stepped = sgd_rule.step(tiled, {"w": tf.ones([2, 1, 2]), "b": tf.ones([2, 1])}, {}, 0.5)
    assert set(stepped) == {"w", "b"}
    np.testing.assert_allclose(stepped["w"].numpy(), [[[0.5, 1.5]]] * 2)
    meta = InnerMetaSGD()
    rates = {n: tf.Variable(r) for n, r in meta.init(params, 0.1).items()}
    assert {n: r.shape for n, r in rates.items()} == {n: p.shape for n, p in params.items()}
    rates["b"].assign([0.25])
    stepped = meta.step(tiled, {"w": tf.ones([2, 1, 2]), "b": 2 * tf.ones([2, 1])}, rates, 123.0)
    np.testing.assert_allclose(stepped["w"].numpy(), [[[0.9, 1.9]]] * 2, rtol=1e-6)
    np.testing.assert_allclose(stepped["b"].numpy(), [[2.5]] * 2)


def test_rules_resolve_by_name_without_the_host():
    assert isinstance(resolve_rule(None, "inner-metasgd", "maml"), InnerMetaSGD)
    assert isinstance(resolve_rule(None, None, "reptile"), InnerSGD)  # no inner_rule option: plain SGD
    given = InnerMetaSGD()
    assert resolve_rule(given, "inner-sgd", "maml") is given
    with pytest.raises(ConfigError, match="'inner-sign' is not built into metaplug-tensorflow .* pass rule="):
        resolve_rule(None, "inner-sign", "maml")
    with pytest.raises(ConfigError, match="reptile has no inner_rule option"):
        resolve_rule(given, None, "reptile")
    assert set(BUILTIN_RULES) == {"inner-sgd", "inner-metasgd", "inner-adam", "inner-rmsprop"}

"""Cross-backend parity: the PyTorch and TensorFlow plugins compute the same numbers.

Both backends get identical initial weights (the torch algorithm's ``state_dict``,
loaded into the TensorFlow one: the shared layout of docs/models.md) and identical
episodes from the host's samplers. For every algorithm, on the MLP (sinusoid) and on
conv4 with batch norm (Omniglot), the test compares the metrics of one meta-step,
the meta-gradient (read off an SGD step at rate 1: ``before - after``), and the
query losses, accuracies and predictions after adaptation: relative 1e-4 in float32,
1e-9 in float64. Reptile is also compared under the published protocol of Nichol et al.
(inner Adam carried over tasks, mini-batches, non-transductive evaluation, the outer step
annealed linearly; and with inner SGD on the same mini-batches) over several meta-steps,
and MAML's family with non-transductive evaluation. Skipped unless both plugins are
installed.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np
import pytest

pytest.importorskip("metaplug_torch")
pytest.importorskip("metaplug_tensorflow")
for _framework in ("torch", "tensorflow"):  # found without importing them at collection
    if importlib.util.find_spec(_framework) is None:
        pytest.skip(f"{_framework} is not installed", allow_module_level=True)

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec  # noqa: E402
from metaplug.errors import DatasetError  # noqa: E402
from metaplug.plugins.discovery import registry  # noqa: E402
from metaplug.tasks import SinusoidSampler  # noqa: E402

TOLERANCE = {"float32": 1e-4, "float64": 1e-9}

HYPER: dict[str, dict[str, Any]] = {
    "maml": {"inner_lr": 0.05, "inner_steps": 2},
    "fomaml": {"inner_lr": 0.05, "inner_steps": 2},
    "reptile": {"inner_lr": 0.05, "inner_steps": 3},
    "anil": {"inner_lr": 0.05, "inner_steps": 2},
    "metasgd": {"inner_lr": 0.05, "inner_steps": 2},
    "protonet": {},
    "finetune": {"inner_lr": 0.05, "test_inner_steps": 3},
}
IMAGE_LR = 0.4
"""Inner rate on Omniglot (Finn et al.), large enough for adaptation to matter."""


@pytest.fixture(scope="module")
def episodes() -> dict[str, tuple[TaskSpec, ModelSpec, list[EpisodeBatch]]]:
    """Two batches per problem from the host's samplers (Omniglot skipped if absent)."""
    sinusoid = SinusoidSampler("train", seed=3, shots=5, queries=7)
    found = {
        "mlp": (sinusoid.spec, ModelSpec("mlp", (1,), 1, {"hidden": (16, 16)}), [sinusoid.sample(3) for _ in range(2)])
    }
    try:
        from metaplug.tasks.omniglot import OmniglotSampler

        omniglot = OmniglotSampler("train", seed=3, ways=5, shots=1, queries=2)
        found["conv4"] = (
            omniglot.spec,
            ModelSpec("conv4", (1, 28, 28), 5, {"filters": 8}),
            [omniglot.sample(2) for _ in range(2)],
        )
    except DatasetError:
        pass
    return found


def build_pair(
    name: str,
    spec: TaskSpec,
    model_spec: ModelSpec,
    dtype: str,
    hyper: dict[str, Any] | None = None,
    lr: float = 1.0,
    **sgd_options: Any,
) -> tuple[Any, Any]:
    """The torch and tensorflow implementations of ``name`` with the same weights and state
    (SGD at rate ``lr``, and ``sgd_options``), with ``hyper`` (default ``HYPER[name]``)."""
    import torch

    from metaplug_tensorflow.backend import Backend

    reg = registry()
    if hyper is None:
        hyper = dict(HYPER[name])
        if model_spec.name == "conv4" and "inner_lr" in hyper:
            hyper["inner_lr"] = IMAGE_LR
    torch_backend = reg.load("backends", "torch")(device="cpu")
    torch_backend.seed(0)
    torch_model = torch_backend.build_model(model_spec)
    if dtype == "float64":
        torch_model = torch_model.double()
    torch_sgd = functools.partial(reg.load("optimizers", "sgd", backend="torch"), lr=lr, **sgd_options)
    torch_alg = reg.load("algorithms", name, backend="torch")(
        backend=torch_backend, model=torch_model, spec=spec, optimizer=torch_sgd, **hyper
    )

    tf_backend = Backend(device="cpu", dtype=dtype)
    tf_sgd = functools.partial(reg.load("optimizers", "sgd", backend="tensorflow"), lr=lr, **sgd_options)
    tf_alg = reg.load("algorithms", name, backend="tensorflow")(
        backend=tf_backend, model=tf_backend.build_model(model_spec), spec=spec, optimizer=tf_sgd, **hyper
    )

    synchronise(torch_alg, tf_alg)
    assert torch.get_default_dtype() == torch.float32
    return torch_alg, tf_alg


def synchronise(torch_alg: Any, tf_alg: Any) -> None:
    """Give the TensorFlow algorithm the torch one's weights and learned state."""
    shared = {k: v for k, v in torch_alg.state_dict().items() if not k.startswith("optimizer.")}
    state = tf_alg.state_dict()
    assert set(shared) == {k for k in state if not k.startswith("optimizer.")}
    tf_alg.load_state_dict({**state, **shared})


def close(actual: np.ndarray, expected: np.ndarray, tolerance: float, what: str, scale: float = 0.0) -> None:
    """Equal to ``tolerance`` relative to each entry, or to the largest entry of the array (or
    ``scale``, the meta-gradient's largest entry: conv biases before batch norm have an exact
    gradient of zero, so only rounding is left there)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if expected.size and not np.all(np.isnan(expected)):
        scale = max(scale, float(np.nanmax(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale + 1e-12, err_msg=what)


def snapshot(algorithm: Any) -> dict[str, np.ndarray]:
    """A copy of the state that later steps cannot change, whatever the backend returns."""
    return {k: np.array(v, copy=True) for k, v in algorithm.state_dict().items()}


def step(algorithm: Any, batch: EpisodeBatch) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    before = snapshot(algorithm)
    metrics = algorithm.meta_train_step(batch)
    after = snapshot(algorithm)
    return metrics, {k: before[k] - after[k] for k in before if not k.startswith("optimizer.")}


CASES = [(name, model) for model in ("mlp", "conv4") for name in HYPER if not (name == "protonet" and model == "mlp")]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, model", CASES)
def test_backends_agree(episodes, name, model, dtype):
    if model not in episodes:
        pytest.skip("Omniglot data not available")
    spec, model_spec, batches = episodes[model]
    torch_alg, tf_alg = build_pair(name, spec, model_spec, dtype)
    tolerance = TOLERANCE[dtype]

    assert_same_meta_step(torch_alg, tf_alg, batches[0], tolerance)
    assert_same_evaluation(torch_alg, tf_alg, batches[1], tolerance)
    assert_same_adaptation(torch_alg, tf_alg, batches[1], tolerance)


def assert_same_meta_step(torch_alg: Any, tf_alg: Any, batch: Any, tolerance: float) -> None:
    """One ``meta_train_step`` gives the same metrics and meta-gradient on both backends
    (each gradient compared relative to the largest entry of all)."""
    torch_metrics, torch_grad = step(torch_alg, batch)
    tf_metrics, tf_grad = step(tf_alg, batch)
    assert torch_metrics.keys() == tf_metrics.keys()
    for key in torch_metrics:
        close(tf_metrics[key], torch_metrics[key], tolerance, f"meta_train_step {key}")
    assert torch_grad.keys() == tf_grad.keys()
    largest = max(float(np.abs(g).max()) for g in torch_grad.values())
    assert largest > 0
    for key in torch_grad:
        if key.endswith("conv.bias"):
            # batch norm cancels a conv bias: its exact meta-gradient is zero, both sides hold rounding
            assert max(np.abs(torch_grad[key]).max(), np.abs(tf_grad[key]).max()) <= 10 * tolerance * largest
            continue
        close(tf_grad[key], torch_grad[key], tolerance, f"meta-gradient {key}", scale=largest)


def assert_same_evaluation(torch_alg: Any, tf_alg: Any, batch: Any, tolerance: float) -> None:
    """``evaluate`` gives the same per-task arrays on both backends."""
    torch_eval, tf_eval = torch_alg.evaluate(batch), tf_alg.evaluate(batch)
    assert torch_eval.keys() == tf_eval.keys()
    for key in torch_eval:
        close(tf_eval[key], torch_eval[key], tolerance, f"evaluate {key}")


def assert_same_adaptation(torch_alg: Any, tf_alg: Any, batch: Any, tolerance: float) -> None:
    """``adapt`` to the first task's support set predicts its queries alike on both backends."""
    torch_out = torch_alg.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
    tf_out = tf_alg.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
    close(tf_out, torch_out, tolerance, "adapted predictions")


REPTILE_PROTOCOL: dict[str, Any] = {
    "inner_optimizer": "adam",
    "inner_steps": 3,
    "inner_batch_size": 4,
    "test_inner_steps": 4,
    "test_inner_batch_size": 3,
    "transductive": False,
}
"""supervised-reptile's options on small episodes: batches of 4 (sinusoid: 5 support points, so
a batch can span two shuffles) and 3 at test time; sinusoid's MLP has no batch norm, so
``transductive=False`` matters on conv4 only."""
REPTILE_INNER_LR = {"mlp": 0.01, "conv4": 0.001}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", ["mlp", "conv4"])
@pytest.mark.parametrize("inner_optimizer", ["adam", "sgd"])
def test_reptile_published_protocol_agrees(episodes, model, dtype, inner_optimizer):
    if model not in episodes:
        pytest.skip("Omniglot data not available")
    spec, model_spec, batches = episodes[model]
    hyper = {**REPTILE_PROTOCOL, "inner_lr": REPTILE_INNER_LR[model], "inner_optimizer": inner_optimizer}
    if inner_optimizer == "sgd":  # plain SGD on the same mini-batches
        hyper["inner_lr"] = 0.05 if model == "mlp" else IMAGE_LR
    elif model == "conv4" and dtype == "float32":
        # batch norm makes the conv biases' gradients zero up to rounding (and a few others
        # nearly so); Adam with epsilon 1e-8 turns such float32 rounding into steps of the
        # order of the rate, so the backends drift apart by rounding (1e-2 relative after
        # 3 meta-steps here); a larger epsilon keeps rounding small, float64 runs 1e-8
        hyper["adam_epsilon"] = 1e-5
    torch_alg, tf_alg = build_pair("reptile", spec, model_spec, dtype, hyper, final_lr=0.0, anneal_steps=3)
    tolerance = TOLERANCE[dtype]

    def compared(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # batch norm cancels a conv bias: its gradient is rounding, which Adam scales up to
        # steps of the order of the rate, different on each side but without effect on outputs
        return {k: v for k, v in state.items() if not k.endswith("conv.bias") and not k.startswith("optimizer.")}

    for number, batch in enumerate([batches[0], batches[1], batches[0], batches[1]]):
        # outer rates 1, 2/3, 1/3, 0; each step continues the inner Adam state of the last
        torch_metrics, tf_metrics = torch_alg.meta_train_step(batch), tf_alg.meta_train_step(batch)
        assert torch_metrics.keys() == tf_metrics.keys()
        for key in torch_metrics:
            close(tf_metrics[key], torch_metrics[key], tolerance, f"step {number}: meta_train_step {key}")
        torch_state, tf_state = compared(snapshot(torch_alg)), compared(snapshot(tf_alg))
        assert torch_state.keys() == tf_state.keys()
        for key in torch_state:
            close(tf_state[key], torch_state[key], tolerance, f"step {number}: state {key}")
    if inner_optimizer == "adam":
        assert int(tf_state["inner_adam.t"]) == 4 * len(batches[0].support_x) * REPTILE_PROTOCOL["inner_steps"]
    else:
        assert not any(k.startswith("inner_adam.") for k in tf_state)
    assert int(tf_state["inner_batches.train"]) == 4 * len(batches[0].support_x)

    for _ in range(2):  # evaluation leaves the Adam state as it is; its draws go on
        assert_same_evaluation(torch_alg, tf_alg, batches[1], tolerance)
    assert_same_adaptation(torch_alg, tf_alg, batches[1], tolerance)
    torch_state, tf_state = snapshot(torch_alg), snapshot(tf_alg)
    for key in ("inner_adam.t", "inner_batches.seed", "inner_batches.train", "inner_batches.eval"):
        if key in torch_state or key in tf_state:
            assert np.array_equal(tf_state[key], torch_state[key]), key


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_non_transductive_evaluation_agrees(episodes, name):
    if "conv4" not in episodes:
        pytest.skip("Omniglot data not available")
    spec, model_spec, batches = episodes["conv4"]
    hyper = {**HYPER[name], "inner_lr": IMAGE_LR, "transductive": False}
    torch_alg, tf_alg = build_pair(name, spec, model_spec, "float64", hyper)
    assert_same_evaluation(torch_alg, tf_alg, batches[1], TOLERANCE["float64"])
    assert_same_adaptation(torch_alg, tf_alg, batches[1], TOLERANCE["float64"])

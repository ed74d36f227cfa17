"""Relation Networks, R2-D2 and the Meta-LSTM on torch: meta-gradients equal central finite
differences in float64 on a tiny model, and short runs on real Omniglot 5-way 1-shot learn
(clearly above the 20% of chance; the Meta-LSTM's updates beat the loss before them).
Cross-backend parity is in ``test_parity_relation_r2d2_metalstm.py``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("metaplug_torch")

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec  # noqa: E402
from metaplug.errors import ConfigError, DatasetError  # noqa: E402
from metaplug.plugins.discovery import registry  # noqa: E402
from metaplug.tasks import SinusoidSampler  # noqa: E402


def omniglot(split: str, seed: int, shots: int = 1, queries: int = 2) -> Any:
    try:
        from metaplug.tasks.omniglot import OmniglotSampler

        return OmniglotSampler(split, seed=seed, ways=5, shots=shots, queries=queries)
    except DatasetError:
        pytest.skip("Omniglot data not available")


def build(
    name: str, spec: Any, model_spec: ModelSpec, dtype: torch.dtype, lr: float | None = None, **hyper: Any
) -> Any:
    """The torch algorithm ``name``, seeded; SGD at rate 1 (the step is minus the
    meta-gradient) unless ``lr`` (then the default outer optimizer, Adam, at ``lr``)."""
    reg = registry()
    backend = reg.load("backends", "torch")(device="cpu")
    backend.seed(0)
    model = backend.build_model(model_spec).to(dtype)
    optimizer = reg.load("optimizers", "sgd" if lr is None else "adam", backend="torch")
    algorithm = reg.load("algorithms", name, backend="torch")
    return algorithm(
        backend=backend, model=model, spec=spec, optimizer=functools.partial(optimizer, lr=lr or 1.0), **hyper
    )


def parameters(algorithm: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in algorithm.state_dict().items() if not k.startswith("optimizer.")}


def meta_gradient(algorithm: Any, batch: EpisodeBatch) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The state before one SGD step at rate 1 and the meta-gradient (before - after)."""
    before = parameters(algorithm)
    algorithm.meta_train_step(batch)
    after = parameters(algorithm)
    algorithm.load_state_dict({**algorithm.state_dict(), **before})
    return before, {k: before[k] - after[k] for k in before}


def directional_check(
    algorithm: Any, objective: Any, state: dict[str, np.ndarray], grad: dict[str, np.ndarray], seed: int
) -> None:
    """``grad . d`` equals the central difference of ``objective`` along random directions ``d``.

    The step is small (1e-7) because ReLU and max-pooling kinks lie within 1e-5 of the
    base point on real Omniglot images (a step of 1e-5 crosses some: errors of 1e-4)."""
    rng = np.random.default_rng(seed)
    for _ in range(2):
        direction = {k: rng.normal(size=v.shape) for k, v in state.items()}
        eps = 1e-7
        values = []
        for sign in (1, -1):
            moved = {k: v + sign * eps * direction[k] for k, v in state.items()}
            algorithm.load_state_dict({**algorithm.state_dict(), **moved})
            values.append(objective())
        algorithm.load_state_dict({**algorithm.state_dict(), **state})
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum(float(np.sum(grad[k] * direction[k])) for k in grad)
        assert abs(analytic) > 1e-6
        assert numeric == pytest.approx(analytic, rel=1e-6)


@pytest.mark.parametrize(
    "name, shots, hyper",
    [
        ("relationnet", 1, {}),
        ("relationnet", 2, {"relation": "mlp", "relation_filters": 8}),
        ("r2d2", 1, {"init_scale": 1.0}),
        ("r2d2", 2, {"init_scale": 1.0, "init_lambda": 0.5}),  # 10 support examples > 8 features + 1: primal
    ],
)
def test_metric_meta_gradients_equal_finite_differences(name, shots, hyper):
    sampler = omniglot("train", 4, shots)
    model = ModelSpec("conv4", (1, 28, 28), 5, {"filters": 8})
    algorithm = build(name, sampler.spec, model, torch.float64, **hyper)
    batch = sampler.sample(2)
    state, grad = meta_gradient(algorithm, batch)
    assert any(k.startswith(("relation.", "r2d2.")) and np.abs(v).max() > 0 for k, v in grad.items())
    directional_check(algorithm, lambda: float(np.mean(algorithm.evaluate(batch)["loss"])), state, grad, seed=1)


def test_metalstm_meta_gradient_equals_finite_differences_with_the_gradients_held_constant():
    """The paper's meta-gradient ignores how the learner's gradients depend on its parameters:
    record each update's gradient and loss at the base point, then differentiate the query
    loss of the unrolled meta-LSTM on those constants by central differences."""
    from metaplug_torch.algorithms.metalstm import meta_lstm_step
    from metaplug_torch.losses import task_loss

    sampler = SinusoidSampler("train", seed=3, shots=5, queries=7)
    model = ModelSpec("mlp", (1,), 1, {"hidden": (6,)})
    algorithm = build("metalstm", sampler.spec, model, torch.float64, inner_steps=3, hidden_size=3, batching="loop")
    batch = sampler.sample(2)
    data = algorithm.episode_tensors(batch)
    state, grad = meta_gradient(algorithm, batch)
    names = algorithm.model.names
    constants = []  # per task, per update: (gradient, loss) at the base point's trajectory
    with torch.no_grad():
        for task in range(2):
            params = {n: p.detach().clone() for n, p in algorithm.params.items()}
            theta, recurrent, recorded = torch.cat([params[n].reshape(-1) for n in names]), None, []
            for _ in range(3):
                point = unflatten(theta, params)
                with torch.enable_grad():
                    point = {n: p.requires_grad_() for n, p in point.items()}
                    loss = task_loss("regression", algorithm.model(point, data.support_x[task]), data.support_y[task])
                    grads = torch.autograd.grad(loss, list(point.values()))
                flat = torch.cat([g.reshape(-1) for g in grads])
                recorded.append((flat, loss.detach()))
                theta, recurrent = meta_lstm_step(dict(algorithm.extra), theta, flat, loss.detach(), recurrent)
            constants.append(recorded)

    def frozen_objective() -> float:
        with torch.no_grad():
            losses = []
            for task in range(2):
                params = algorithm.params
                theta, recurrent = torch.cat([params[n].reshape(-1) for n in names]), None
                for flat, loss in constants[task]:
                    theta, recurrent = meta_lstm_step(dict(algorithm.extra), theta, flat, loss, recurrent)
                outputs = algorithm.model(unflatten(theta, params), data.query_x[task])
                losses.append(float(task_loss("regression", outputs, data.query_y[task])))
            return float(np.mean(losses))

    assert any(k.startswith("metalstm.") and np.abs(v).max() > 0 for k, v in grad.items())
    directional_check(algorithm, frozen_objective, state, grad, seed=2)


def unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    pieces = flat.split([p.numel() for p in like.values()])
    return {n: piece.reshape(p.shape) for (n, p), piece in zip(like.items(), pieces, strict=True)}


def learn(name: str, steps: int, filters: int, **hyper: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Mean test metrics on 32 Omniglot 5-way 1-shot tasks before and after ``steps`` meta-steps."""
    train, test = omniglot("train", 1, queries=5), omniglot("test", 2, queries=5)
    model = ModelSpec("conv4", (1, 28, 28), 5, {"filters": filters})
    algorithm = build(name, train.spec, model, torch.float32, lr=0.001, **hyper)
    evaluation = test.sample(32)
    before = {k: float(np.mean(v)) for k, v in algorithm.evaluate(evaluation).items()}
    for _ in range(steps):
        algorithm.meta_train_step(train.sample(4))
    return before, {k: float(np.mean(v)) for k, v in algorithm.evaluate(evaluation).items()}


@pytest.mark.parametrize("name, hyper", [("relationnet", {}), ("r2d2", {"init_scale": 10.0})])
def test_metric_learners_learn_omniglot(name, hyper):
    before, after = learn(name, 30, 8, **hyper)
    assert after["accuracy"] > 0.38 > before["accuracy"]
    assert after["loss"] < before["loss"]


def test_metalstm_learns_to_update_on_omniglot():
    before, after = learn("metalstm", 25, 8, inner_steps=5)
    assert after["accuracy"] > 0.3
    assert after["loss"] < before["loss"]
    assert after["loss"] < after["loss_before"]  # its updates improve on the initial parameters


@pytest.mark.slow
def test_metalstm_learns_further_with_a_longer_run():
    _, after = learn("metalstm", 60, 16, inner_steps=5)
    assert after["accuracy"] > 0.5
    assert after["loss"] < after["loss_before"] - 0.3


def test_relation_conv_needs_feature_maps():
    sampler = omniglot("train", 4)
    with pytest.raises(ConfigError, match="relation 'conv' needs the conv4 model"):
        build(
            "relationnet",
            sampler.spec,
            ModelSpec("mlp", (1, 28, 28), 5, {"hidden": (8,)}),
            torch.float32,
            relation="conv",
        )


def test_evaluate_accepts_the_undefined_loss_before_of_a_learner_without_inner_loop(tmp_path):
    """``metaplug evaluate`` of an R2-D2 run: ``loss_before`` is NaN on every episode (no inner
    loop), which is no overflow."""
    import json

    from click.testing import CliRunner

    import metaplug.cli.evaluate  # adds the evaluate command
    import metaplug.cli.train  # noqa: F401  (adds the train command)
    from metaplug.cli import cli

    omniglot("train", 1)  # skips without the data
    run = tmp_path / "run"
    train = ["train", "--tasks", "omniglot", "--algorithm", "r2d2", "--backend", "torch", "--iterations", "2"]
    options = ["--set", "model.filters=4", "--val-every", "0", "--test-tasks", "0", "--quiet", "--run-dir", str(run)]
    done = CliRunner().invoke(cli, [*train, *options])
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(cli, ["evaluate", str(run), "--episodes", "4", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["loss_before"]["mean"] is None
    assert 0 <= result["accuracy"]["mean"] <= 1


def test_metalstm_leaves_weights_frozen_in_adaptation_bitwise_unchanged():
    sampler = SinusoidSampler("train", seed=3, shots=5, queries=7)
    model = ModelSpec("mlp", (1,), 1, {"hidden": (6,)})
    algorithm = build(
        "metalstm", sampler.spec, model, torch.float64, freeze=("features.*",), freeze_during="adaptation"
    )
    batch = sampler.sample(1)
    adapted = algorithm.adapt(batch.support_x[0], batch.support_y[0], steps=3).weights()
    start = {k.removeprefix("model."): v for k, v in parameters(algorithm).items() if k.startswith("model.")}
    assert all(np.array_equal(adapted[n], start[n]) for n in adapted if n.startswith("features."))
    assert not np.array_equal(adapted["head.weight"], start["head.weight"])

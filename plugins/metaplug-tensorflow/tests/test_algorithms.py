"""Every algorithm: vectorized equals the per-task loop, metrics, adaptation and Reptile's update."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug_tensorflow.layout import to_shared

ALGORITHMS = ("maml", "fomaml", "reptile", "anil", "metasgd", "protonet", "finetune")

SLOW_TRACING = ("fomaml", "reptile", "metasgd")
"""conv4 with per-task weights under tf.vectorized_map takes long to trace; maml covers that path."""

CASES = [
    pytest.param(name, data, marks=[pytest.mark.slow] if data == "image_batches" and name in SLOW_TRACING else [])
    for data in ("sinusoid_batches", "image_batches")
    for name in ALGORITHMS
    if not (name == "protonet" and data == "sinusoid_batches")
]


@pytest.mark.parametrize("name, data", CASES)
def test_vectorized_equals_loop(request, make, grad, name, data):
    spec, batches = request.getfixturevalue(data)
    results = {}
    for batching in ("vectorized", "loop"):
        algorithm = make(name, spec, batching=batching)
        assert algorithm.mode == batching
        gradient = grad(algorithm, batches[0])
        evaluation = algorithm.evaluate(batches[1], steps=2)
        results[batching] = gradient, evaluation
    (g_vec, e_vec), (g_loop, e_loop) = results["vectorized"], results["loop"]
    assert g_vec.keys() == g_loop.keys()
    assert any(np.abs(g).max() > 0 for g in g_vec.values())
    for key in g_vec:
        np.testing.assert_allclose(g_vec[key], g_loop[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert e_vec.keys() == e_loop.keys()
    for key in e_vec:
        assert e_vec[key].shape == (batches[1].num_tasks,)
        np.testing.assert_allclose(e_vec[key], e_loop[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", ["maml", "protonet", "finetune"])
def test_metrics_evaluate_and_adapt(make, image_batches, name):
    spec, batches = image_batches
    algorithm = make(name, spec, dtype="float32")
    metrics = algorithm.meta_train_step(batches[0])
    assert set(metrics) == {"loss", "accuracy"} and np.isfinite(metrics["loss"])
    result = algorithm.evaluate(batches[1])
    assert set(result) == {"loss", "accuracy", "loss_before"}
    assert all(v.shape == (3,) for v in result.values())
    assert np.all(np.isnan(result["loss_before"])) == (name == "protonet")
    assert np.all(np.isfinite(result["loss"]))
    assert np.all((result["accuracy"] >= 0) & (result["accuracy"] <= 1))
    batch = batches[1]
    adapted = algorithm.adapt(batch.support_x[0], batch.support_y[0])
    scores = adapted.predict(batch.query_x[0])
    assert scores.shape == (batch.query_x.shape[1], spec.output_size)
    accuracy = np.mean(scores.argmax(axis=1) == batch.query_y[0])
    assert accuracy == pytest.approx(result["accuracy"][0], abs=1e-6)


def test_adapted_model_reproduces_evaluate_loss(make, sinusoid_batches):
    spec, batches = sinusoid_batches
    algorithm = make("maml", spec, inner_lr=0.05)
    batch = batches[2]
    result = algorithm.evaluate(batch, steps=3)
    for t in range(batch.num_tasks):
        adapted = algorithm.adapt(batch.support_x[t], batch.support_y[t], steps=3)
        mse = np.mean((adapted.predict(batch.query_x[t]) - batch.query_y[t]) ** 2)
        assert mse == pytest.approx(result["loss"][t], rel=1e-10)
    assert np.mean(result["loss"]) < np.mean(result["loss_before"])


def test_reptile_moves_towards_mean_adapted_weights(make, grad, sinusoid_batches):
    """Reptile's outer gradient is theta - mean(phi_i), with phi_i what ``adapt`` returns."""
    spec, batches = sinusoid_batches
    algorithm = make("reptile", spec, inner_lr=0.05, inner_steps=3)
    batch = batches[0]
    theta = [v.numpy() for v in algorithm.model.variables]
    phis = [algorithm.adapt(batch.support_x[t], batch.support_y[t], steps=3).state for t in range(batch.num_tasks)]
    gradient = grad(algorithm, batch)
    for i, name in enumerate(algorithm.model.names):
        expected = theta[i] - np.mean([phi[i].numpy() for phi in phis], axis=0)
        np.testing.assert_allclose(gradient[f"model.{name}"], to_shared(expected), rtol=1e-9, atol=1e-14)


def test_anil_adapts_only_the_head(make, image_batches):
    spec, batches = image_batches
    algorithm = make("anil", spec, inner_lr=0.5)
    batch = batches[0]
    adapted = algorithm.adapt(batch.support_x[0], batch.support_y[0])
    k = algorithm.model.head_index
    for before, after in zip(algorithm.model.variables[:k], adapted.state[:k], strict=True):
        assert np.array_equal(before.numpy(), after.numpy())
    assert not np.allclose(algorithm.model.variables[k].numpy(), adapted.state[k].numpy())


def test_finetune_pretrains_over_all_training_classes(make, grad, image_batches):
    spec, batches = image_batches
    algorithm = make("finetune", spec, dtype="float32")
    state = algorithm.state_dict()
    assert state["pretrain.head.weight"].shape == (spec.num_classes, 4)
    gradient = grad(algorithm, batches[0])
    bias = gradient["pretrain.head.bias"]  # mean over examples of softmax - one-hot(class id)
    unseen = np.setdiff1d(np.arange(spec.num_classes), batches[0].classes)
    assert len(unseen) and np.all(bias[unseen] > 0)
    assert bias.sum() == pytest.approx(0, abs=1e-6)
    assert np.any(bias[np.unique(batches[0].classes)] < 0)
    assert not np.any(gradient["model.head.weight"])  # the episode head is not pre-trained


def test_an_algorithms_options_must_extend_batching_options():
    from dataclasses import dataclass

    from metaplug import Options, option
    from metaplug_tensorflow.algorithms.base import MetaLearner

    @dataclass(frozen=True)
    class Plain(Options):
        x: int = option(1)

    with pytest.raises(TypeError, match="Options must extend metaplug.contract.hyperparameters.BatchingOptions"):

        class Bad(MetaLearner):
            Options = Plain

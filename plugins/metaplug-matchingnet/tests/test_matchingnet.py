"""Matching Networks beyond the conformance suite: the model against an independent
numpy implementation (predictions and meta-gradient), option checks, learning on Omniglot."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug.tasks.datasets import data_dir
from metaplug.testing import PrototypeSampler, build_algorithm

SCALE = 10.0


def numpy_log_probabilities(weights: dict[str, np.ndarray], sx, sy, x, ways: int, scale: float = SCALE):
    """Matching Networks on the standard mlp's ``features`` (two ReLU layers), in float64."""

    def features(inputs):
        h = np.maximum(inputs @ weights["features.0.weight"].T + weights["features.0.bias"], 0)
        return np.maximum(h @ weights["features.1.weight"].T + weights["features.1.bias"], 0)

    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    similarity = scale * unit(features(x)) @ unit(features(sx)).T
    attention = np.exp(similarity - similarity.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    return np.log(np.maximum(attention @ np.eye(ways)[sy], 1e-12))


def numpy_loss(weights, batch, ways):
    losses = [
        -numpy_log_probabilities(weights, sx, sy, qx, ways)[np.arange(len(qy)), qy].mean()
        for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y, strict=True)
    ]
    return float(np.mean(losses))


def model_weights(algorithm) -> dict[str, np.ndarray]:
    return {
        k[len("model.") :]: v.astype(np.float64) for k, v in algorithm.state_dict().items() if k.startswith("model.")
    }


def hard_sampler():
    return PrototypeSampler("train", seed=0, ways=5, shots=2, queries=3, separation=1.0, noise=1.0)


def test_predictions_match_a_numpy_implementation():
    sampler = hard_sampler()
    algorithm = build_algorithm("matchingnet", "torch", sampler.spec, seed=0)
    batch = sampler.sample(1)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    expected = numpy_log_probabilities(model_weights(algorithm), sx, sy, qx, ways=5)
    np.testing.assert_allclose(algorithm.adapt(sx, sy).predict(qx), expected, rtol=1e-4, atol=1e-5)


def test_meta_gradient_matches_finite_differences():
    sampler = hard_sampler()
    lr = 1e-2
    algorithm = build_algorithm("matchingnet", "torch", sampler.spec, seed=1, optimizer="sgd", lr=lr)
    batch = sampler.sample(3)
    before = model_weights(algorithm)
    algorithm.meta_train_step(batch)  # SGD: new weights = old - lr * gradient of the mean query loss
    gradient = {k: (before[k] - v) / lr for k, v in model_weights(algorithm).items()}
    rng = np.random.default_rng(0)
    for name in ("features.0.weight", "features.1.bias"):
        for index in [tuple(rng.integers(s) for s in before[name].shape) for _ in range(3)]:
            shifted = {k: v.copy() for k, v in before.items()}
            shifted[name][index] += 1e-5
            up = numpy_loss(shifted, batch, 5)
            shifted[name][index] -= 2e-5
            down = numpy_loss(shifted, batch, 5)
            numeric = (up - down) / 2e-5
            assert gradient[name][index] == pytest.approx(numeric, rel=2e-2, abs=2e-4), (name, index)
    assert np.all(gradient["head.weight"] == 0), "the head is unused, so it must get no gradient"


@pytest.mark.parametrize("options", [{"scale": 0}, {"scale": -1.0}, {"batching": "sideways"}])
def test_rejects_bad_options(options):
    with pytest.raises(ConfigError):
        build_algorithm("matchingnet", "torch", hard_sampler().spec, **options)


OMNIGLOT = pytest.mark.skipif(
    not (data_dir("omniglot") / "images_background.zip").is_file(),
    reason="Omniglot not available (set METAPLUG_DATA_DIR)",
)


def omniglot_run(steps: int, meta_batch: int, test_tasks: int) -> tuple[float, float]:
    """Test-split 5-way 1-shot accuracy before and after ``steps`` meta-training steps."""
    from metaplug.tasks.omniglot import OmniglotSampler

    train = OmniglotSampler("train", seed=0, ways=5, shots=1, queries=5)
    test = OmniglotSampler("test", seed=0, ways=5, shots=1, queries=5).sample(test_tasks)
    algorithm = build_algorithm("matchingnet", "torch", train.spec, seed=0, lr=0.003, model_options={"filters": 32})
    before = float(algorithm.evaluate(test)["accuracy"].mean())
    for _ in range(steps):
        algorithm.meta_train_step(train.sample(meta_batch))
    return before, float(algorithm.evaluate(test)["accuracy"].mean())


@OMNIGLOT
def test_learns_omniglot_5_way_1_shot():
    before, after = omniglot_run(steps=25, meta_batch=4, test_tasks=20)
    assert after > 0.6 and after > before + 0.1, f"test accuracy {before:.3f} -> {after:.3f} (chance 0.2)"


@OMNIGLOT
@pytest.mark.slow
def test_reaches_high_accuracy_on_omniglot_5_way_1_shot():
    before, after = omniglot_run(steps=300, meta_batch=8, test_tasks=100)
    assert after > 0.9, f"test accuracy {before:.3f} -> {after:.3f} after 300 steps"

"""Freezing and the fine-tuning baseline's regularisers on both backends.

Freezing (``freeze``, ``freeze_during``): the frozen weights come out of meta-training
and/or adaptation bitwise unchanged while the others move, for every algorithm family,
and both backends take the same steps. The fine-tuning baseline's ``l2`` and ``l2-sp``
regularisers give the same numbers on PyTorch and TensorFlow (equal weights and tasks,
relative 1e-4 in float32, 1e-9 in float64) and change the result. Skipped unless both
plugins are installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

pytest.importorskip("metaplug_torch")
pytest.importorskip("metaplug_tensorflow")
for _framework in ("torch", "tensorflow"):
    if importlib.util.find_spec(_framework) is None:
        pytest.skip(f"{_framework} is not installed", allow_module_level=True)

from test_parity import (  # noqa: E402
    TOLERANCE,
    assert_same_adaptation,
    assert_same_evaluation,
    assert_same_meta_step,
    build_pair,
    snapshot,
)
from test_parity_resnet12 import synthetic_batch  # noqa: E402

from metaplug.contract.interfaces import ModelSpec, TaskSpec  # noqa: E402
from metaplug.errors import ConfigError  # noqa: E402
from metaplug.tasks import SinusoidSampler  # noqa: E402

SINUSOID = SinusoidSampler("train", seed=5, shots=5, queries=6)
MLP = ModelSpec("mlp", (1,), 1, {"hidden": (8, 8)})
IMAGES = TaskSpec("classification", (1, 28, 28), 5, num_classes=20, default_model="conv4")
CONV4 = ModelSpec("conv4", (1, 28, 28), 5, {"filters": 4})


def model_weights(algorithm: Any) -> dict[str, np.ndarray]:
    return {k: v for k, v in snapshot(algorithm).items() if k.startswith("model.")}


# -- freezing -----------------------------------------------------------------------------

TRAINING_CASES = [
    ("maml", {"inner_lr": 0.05, "inner_steps": 2}),
    ("reptile", {"inner_lr": 0.05, "inner_steps": 2}),
    ("reptile", {"inner_lr": 0.01, "inner_optimizer": "adam", "inner_batch_size": 3}),
    ("finetune", {"inner_lr": 0.05}),
]


@pytest.mark.parametrize("name, hyper", TRAINING_CASES)
def test_weights_frozen_in_training_stay_bitwise_and_both_backends_agree(name, hyper):
    """Adam with weight decay would move a weight whose gradient is zero: frozen ones get none."""
    hyper = {**hyper, "freeze": ["features.0.*"], "freeze_during": "training"}
    pair = build_pair(name, SINUSOID.spec, MLP, "float64", hyper, weight_decay=0.1, momentum=0.9)
    before = [model_weights(a) for a in pair]
    batches = [SINUSOID.sample(3) for _ in range(3)]
    assert_same_meta_step(*pair, batches[0], TOLERANCE["float64"])
    for algorithm, start in zip(pair, before, strict=True):
        for batch in batches[1:]:
            algorithm.meta_train_step(batch)
        after = model_weights(algorithm)
        for key in after:
            frozen = key.startswith("model.features.0.")
            assert np.array_equal(after[key], start[key]) == frozen, key


def test_protonet_freezes_features_on_images():
    hyper = {"freeze": ["features.[01].*"]}
    pair = build_pair("protonet", IMAGES, CONV4, "float32", hyper)
    before = model_weights(pair[0])
    assert_same_meta_step(*pair, synthetic_batch(1), TOLERANCE["float32"])
    for algorithm in pair:
        after = model_weights(algorithm)
        moved = {k for k in after if not np.array_equal(after[k], before[k])}
        assert moved and all(k.startswith(("model.features.2.", "model.features.3.")) for k in moved), moved


def test_freezing_features_in_adaptation_is_anil():
    """MAML that keeps features.* fixed in its inner loop computes what ANIL computes."""
    batch = SINUSOID.sample(3)
    hyper = {"inner_lr": 0.05, "inner_steps": 2}
    frozen = build_pair(
        "maml", SINUSOID.spec, MLP, "float64", {**hyper, "freeze": ["features.*"], "freeze_during": "adaptation"}
    )
    anil = build_pair("anil", SINUSOID.spec, MLP, "float64", hyper)
    for ours, reference in zip(frozen, anil, strict=True):
        np.testing.assert_allclose(ours.evaluate(batch)["loss"], reference.evaluate(batch)["loss"], rtol=1e-12)
        assert ours.meta_train_step(batch) == pytest.approx(reference.meta_train_step(batch), rel=1e-12)
        assert model_weights(ours).keys() == model_weights(reference).keys()
        for key, value in model_weights(ours).items():
            np.testing.assert_allclose(value, model_weights(reference)[key], rtol=1e-12, err_msg=key)
    assert_same_evaluation(*frozen, SINUSOID.sample(2), TOLERANCE["float64"])


@pytest.mark.parametrize(
    "name, extra",
    [
        ("maml", {}),
        ("maml", {"inner_rule": "inner-adam", "inner_lr": 0.01}),  # a stateful rule
        ("mamlpp", {"inner_steps": 2}),
        ("metasgd", {}),
        ("reptile", {}),
        ("finetune", {"test_inner_steps": 3}),
    ],
)
def test_weights_frozen_in_adaptation_are_returned_unchanged(name, extra):
    """The TensorFlow adapted model keeps every weight; the frozen ones are the meta-parameters, bitwise."""
    hyper = {"inner_lr": 0.05, "freeze": ["features.1.*"], "freeze_during": "adaptation", **extra}
    torch_alg, tf_alg = build_pair(name, SINUSOID.spec, MLP, "float32", hyper)
    batch = SINUSOID.sample(2)
    adapted = dict(zip(tf_alg.model.names, tf_alg.adapt(batch.support_x[0], batch.support_y[0]).state, strict=False))
    meta = dict(zip(tf_alg.model.names, tf_alg.model.variables, strict=True))
    for key, value in adapted.items():
        assert np.array_equal(value.numpy(), meta[key].numpy()) == key.startswith("features.1."), key
    assert_same_adaptation(torch_alg, tf_alg, batch, TOLERANCE["float32"])
    assert_same_evaluation(torch_alg, tf_alg, batch, TOLERANCE["float32"])


def test_torch_adaptation_returns_frozen_weights_unchanged():
    torch_alg, _ = build_pair("maml", SINUSOID.spec, MLP, "float32", {"freeze": ["head.*"], "freeze_during": "both"})
    batch = SINUSOID.sample(1)
    params, learnables = torch_alg.evaluation_parameters()
    sx, sy = (torch_alg.backend.tensor(a, torch_alg.dtype) for a in (batch.support_x[0], batch.support_y[0]))
    fast = torch_alg.adapt_support(params, learnables, sx, sy, 3)
    for key, value in fast.items():
        assert (value is params[key]) == key.startswith("head."), key


def test_a_freeze_pattern_that_matches_nothing_is_one_line():
    with pytest.raises(ConfigError, match=r"freeze pattern 'feature\.\*' matches no model weight; the model has"):
        build_pair("maml", SINUSOID.spec, MLP, "float32", {"freeze": ["feature.*"]})
    with pytest.raises(ConfigError, match="freeze_during must be one of both, training, adaptation"):
        build_pair("maml", SINUSOID.spec, MLP, "float32", {"freeze_during": "always"})


def test_finetune_classification_cannot_freeze_its_new_head_in_adaptation():
    with pytest.raises(ConfigError, match="finetune trains a new head .* head.bias, head.weight cannot be frozen"):
        build_pair("finetune", IMAGES, CONV4, "float32", {"freeze": ["head.*"]})


# -- the fine-tuning baseline's regularisers -------------------------------------------------


@pytest.mark.parametrize("regularization", ["l2", "l2-sp"])
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_finetune_regularisers_agree_across_backends_on_regression(regularization, dtype):
    hyper = {"inner_lr": 0.05, "test_inner_steps": 5, "regularization": regularization, "regularization_strength": 2.0}
    pair = build_pair("finetune", SINUSOID.spec, MLP, dtype, hyper)
    batch = SINUSOID.sample(3)
    pair[0].meta_train_step(SINUSOID.sample(3))
    pair[1].load_state_dict({**pair[1].state_dict(), **model_weights(pair[0])})  # move both on the same weights
    assert_same_evaluation(*pair, batch, TOLERANCE[dtype])
    assert_same_adaptation(*pair, batch, TOLERANCE[dtype])
    plain = build_pair("finetune", SINUSOID.spec, MLP, dtype, {**hyper, "regularization": "none"})
    plain[0].load_state_dict(pair[0].state_dict())
    assert not np.allclose(plain[0].evaluate(batch)["loss"], pair[0].evaluate(batch)["loss"], rtol=1e-3)


@pytest.mark.parametrize("regularization", [pytest.param("l2", marks=pytest.mark.slow), "l2-sp"])
def test_finetune_regularisers_agree_across_backends_on_images(regularization):
    hyper = {"inner_lr": 0.4, "test_inner_steps": 3, "regularization": regularization, "regularization_strength": 0.5}
    pair = build_pair("finetune", IMAGES, CONV4, "float32", hyper)
    assert_same_evaluation(*pair, synthetic_batch(2), TOLERANCE["float32"])
    assert_same_adaptation(*pair, synthetic_batch(3), TOLERANCE["float32"])


def test_l2_sp_keeps_fine_tuned_weights_near_their_start_and_l2_near_zero():
    """With strength * inner_lr = 1 each step lands on the anchor minus one plain gradient
    step: the trained weights (l2-sp: the query loss moves a tenth as far from the loss
    before adaptation as without a regulariser, 20 steps) or zero (l2: elsewhere)."""
    batch = SINUSOID.sample(2)
    change = {}
    for regularization in ("none", "l2", "l2-sp"):
        hyper = {"inner_lr": 0.001, "test_inner_steps": 20, "regularization": regularization}
        torch_alg, _ = build_pair(
            "finetune", SINUSOID.spec, MLP, "float64", {**hyper, "regularization_strength": 1000.0}
        )
        result = torch_alg.evaluate(batch)
        change[regularization] = np.abs(result["loss"] - result["loss_before"])
    assert np.all(change["none"] > 0)
    assert np.all(change["l2-sp"] < 0.1 * change["none"]), change
    assert not np.allclose(change["l2"], change["none"], rtol=0.1), change

"""Cross-backend parity of the inner rules ``inner-adam`` and ``inner-rmsprop`` and of
``mamlpp`` (MAML++): on equal weights and episodes the PyTorch and TensorFlow plugins agree
on meta-steps (metrics and meta-gradients), evaluation and adaptation, to relative 1e-9 in
float64 and 1e-4 in float32, like ``test_parity.py`` (whose fixtures and helpers this reuses).
MAML++ runs several meta-steps so that the multi-step loss weights anneal, the derivative
order switches from first to second and the outer rate follows its cosine; each trick is
also switched off alone. Skipped unless both plugins are installed.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pytest

pytest.importorskip("metaplug_torch")
pytest.importorskip("metaplug_tensorflow")
for _framework in ("torch", "tensorflow"):
    if importlib.util.find_spec(_framework) is None:
        pytest.skip(f"{_framework} is not installed", allow_module_level=True)

from test_parity import (  # noqa: E402
    IMAGE_LR,
    TOLERANCE,
    assert_same_adaptation,
    assert_same_evaluation,
    assert_same_meta_step,
    build_pair,
    episodes,  # noqa: F401 (a fixture)
    snapshot,
)

RULE_CASES = [
    ("maml", "inner-adam", "mlp", "float64"),
    pytest.param("maml", "inner-rmsprop", "mlp", "float64", marks=pytest.mark.slow),
    pytest.param("fomaml", "inner-adam", "mlp", "float64", marks=pytest.mark.slow),
    ("anil", "inner-rmsprop", "mlp", "float64"),
    pytest.param("metasgd", "inner-adam", "mlp", "float64", marks=pytest.mark.slow),
    pytest.param("maml", "inner-adam", "mlp", "float32", marks=pytest.mark.slow),
    pytest.param("maml", "inner-adam", "conv4", "float64", marks=pytest.mark.slow),
]
RULE_LR = {"mlp": 0.01, "conv4": 0.01}


@pytest.mark.parametrize("name, rule, model, dtype", RULE_CASES)
def test_inner_rules_agree(episodes, name, rule, model, dtype):  # noqa: F811
    if model not in episodes:
        pytest.skip("Omniglot data not available")
    spec, model_spec, batches = episodes[model]
    hyper = {"inner_lr": RULE_LR[model], "inner_steps": 3, "inner_rule": rule}
    torch_alg, tf_alg = build_pair(name, spec, model_spec, dtype, hyper)
    expected = "InnerAdam" if rule == "inner-adam" else "InnerRMSprop"
    assert type(torch_alg.rule).__name__ == type(tf_alg.rule).__name__ == expected
    tolerance = TOLERANCE[dtype]
    assert_same_meta_step(torch_alg, tf_alg, batches[0], tolerance)
    assert_same_evaluation(torch_alg, tf_alg, batches[1], tolerance)
    assert_same_adaptation(torch_alg, tf_alg, batches[1], tolerance)


MAMLPP: dict[str, Any] = {
    "inner_steps": 3,
    "multi_step_loss_steps": 2,
    "first_order_steps": 1,
    "cosine_steps": 4,
    "min_outer_lr": 0.0,
}
"""Meta-step 0: first order, multi-step weights (1/3 each); step 1: second order, weights
annealed halfway; step 2: the last step's loss only. Outer rates 0.1 times 1, 0.85, 0.5 (cosine)."""
OUTER_LR = 0.1

MAMLPP_CASES = [
    ("mlp", "float64", {}),
    pytest.param("mlp", "float32", {}, marks=pytest.mark.slow),
    pytest.param("mlp", "float64", {"inner_rule": "inner-adam", "inner_lr": 0.01}, marks=pytest.mark.slow),
    ("mlp", "float64", {"multi_step_loss": False}),
    pytest.param("mlp", "float64", {"learned_inner_lr": False, "cosine_annealing": False}, marks=pytest.mark.slow),
    pytest.param("conv4", "float64", {}, marks=pytest.mark.slow),
    pytest.param(
        "conv4",
        "float64",
        {"per_step_batch_norm": False, "test_inner_steps": 4, "transductive": False},
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("model, dtype, switches", MAMLPP_CASES)
def test_mamlpp_agrees_over_meta_steps(episodes, model, dtype, switches):  # noqa: F811
    if model not in episodes:
        pytest.skip("Omniglot data not available")
    spec, model_spec, batches = episodes[model]
    hyper = {"inner_lr": 0.05 if model == "mlp" else IMAGE_LR, **MAMLPP, **switches}
    torch_alg, tf_alg = build_pair("mamlpp", spec, model_spec, dtype, hyper, lr=OUTER_LR)
    tolerance = TOLERANCE[dtype]
    for number in range(3):
        assert_same_meta_step(torch_alg, tf_alg, batches[number % 2], tolerance)
        assert int(snapshot(torch_alg)["mamlpp.steps"]) == int(snapshot(tf_alg)["mamlpp.steps"]) == number + 1
    assert_same_evaluation(torch_alg, tf_alg, batches[1], tolerance)
    assert_same_adaptation(torch_alg, tf_alg, batches[1], tolerance)
    per_step = {k: v.shape for k, v in snapshot(torch_alg).items() if k.startswith(("lslr.", "bn."))}
    if hyper.get("learned_inner_lr", True):
        assert per_step and all(v[0] == 3 for k, v in per_step.items() if k.startswith("lslr."))
    if model == "conv4" and hyper.get("per_step_batch_norm", True):
        assert per_step["bn.features.0.norm.weight"] == (3, model_spec.options["filters"])
    if hyper.get("cosine_annealing", True):  # the rate of meta-step 3 of 4: (1 + cos(3 pi / 4)) / 2
        rate = OUTER_LR * (1 + math.cos(3 * math.pi / 4)) / 2
        assert float(snapshot(torch_alg)["optimizer.lr.0"]) == pytest.approx(rate)

"""Cross-backend parity of Relation Networks, R2-D2 and the Meta-LSTM: on equal weights and
episodes the PyTorch and TensorFlow plugins agree on several meta-steps (metrics and
meta-gradients), evaluation and adaptation, to relative 1e-9 in float64 (1e-4 in float32),
as ``test_parity.py`` checks the other algorithms. conv4 on real Omniglot (skipped when
absent) and the MLP on the sinusoid. Skipped unless both plugins are installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

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
    synchronise,
)

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec  # noqa: E402
from metaplug.errors import DatasetError  # noqa: E402
from metaplug.tasks import SinusoidSampler  # noqa: E402


def omniglot(shots: int) -> tuple[TaskSpec, ModelSpec, list[EpisodeBatch]]:
    try:
        from metaplug.tasks.omniglot import OmniglotSampler

        sampler = OmniglotSampler("train", seed=5, ways=5, shots=shots, queries=2)
    except DatasetError:
        pytest.skip("Omniglot data not available")
    model = ModelSpec("conv4", (1, 28, 28), 5, {"filters": 8})
    return sampler.spec, model, [sampler.sample(2) for _ in range(2)]


def sinusoid() -> tuple[TaskSpec, ModelSpec, list[EpisodeBatch]]:
    sampler = SinusoidSampler("train", seed=3, shots=5, queries=7)
    return sampler.spec, ModelSpec("mlp", (1,), 1, {"hidden": (16, 16)}), [sampler.sample(3) for _ in range(2)]


CASES: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "relationnet-conv": ("relationnet", lambda: omniglot(1), {}),
    "relationnet-mlp-5shot": ("relationnet", lambda: omniglot(2), {"relation": "mlp", "relation_filters": 16}),
    "r2d2-woodbury": ("r2d2", lambda: omniglot(1), {"init_scale": 1.0}),
    "r2d2-primal": ("r2d2", lambda: omniglot(2), {"init_scale": 1.0, "init_lambda": 0.5}),  # 10 shots > 8 + 1
    "metalstm-conv4": ("metalstm", lambda: omniglot(1), {"inner_steps": 2, "hidden_size": 4}),
    "metalstm-mlp": ("metalstm", sinusoid, {"inner_steps": 3, "hidden_size": 4, "transductive": False}),
    "metalstm-mlp-frozen": (
        "metalstm",
        sinusoid,
        {"inner_steps": 2, "hidden_size": 4, "freeze": ("features.0.*",), "freeze_during": "adaptation"},
    ),
}


SLOW = {
    ("relationnet-mlp-5shot", "float64"),
    ("metalstm-conv4", "float64"),
    ("metalstm-mlp-frozen", "float64"),
    ("relationnet-conv", "float32"),
    ("r2d2-woodbury", "float32"),
}
"""TensorFlow traces a graph per case (seconds each): these run with ``-m slow``."""


@pytest.mark.parametrize(
    "case, dtype",
    [
        pytest.param(case, dtype, marks=[pytest.mark.slow] if (case, dtype) in SLOW else [])
        for case in CASES
        for dtype in ("float64", "float32")
        if dtype == "float64" or (case, dtype) in SLOW
    ],
)
def test_backends_agree(case, dtype):
    name, episodes, hyper = CASES[case]
    spec, model_spec, batches = episodes()
    torch_alg, tf_alg = build_pair(name, spec, model_spec, dtype, hyper)
    tolerance = TOLERANCE[dtype]
    for batch in (batches[0], batches[1], batches[0]):  # several meta-steps: the states stay equal
        if dtype == "float32":
            # each backend's float32 step is up to 1.8e-4 (relative) from float64 on R2-D2's
            # lambda and the first convolution (the two backends 3e-6 apart from the same state):
            # left to drift apart, the states' differences reach the tolerance by the third step
            synchronise(torch_alg, tf_alg)
        assert_same_meta_step(torch_alg, tf_alg, batch, tolerance)
    assert_same_evaluation(torch_alg, tf_alg, batches[1], tolerance)
    assert_same_adaptation(torch_alg, tf_alg, batches[1], tolerance)

"""State round-trips through plain numpy files, and a resumed run continues bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from torch_helpers import ALGORITHMS, IMAGES, SINUSOID, build, image_batch, regression_batch

from metaplug.errors import ConfigError

CASES = [(name, SINUSOID if name != "protonet" else IMAGES) for name in ALGORITHMS] + [("maml", IMAGES)]


def batches(spec, count):
    make = image_batch if spec is IMAGES else regression_batch
    return [make(seed=i) for i in range(count)]


def saved_and_loaded(state, path):
    np.savez(path, **state)
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name,spec", CASES, ids=[f"{n}-{s.problem}" for n, s in CASES])
def test_resumed_run_is_bit_identical(name, spec, tmp_path):
    data = batches(spec, 4)
    options = {"optimizer": "sgd", "lr": 0.01} if name == "reptile" else {}
    straight = build(name, spec, seed=0, **options)
    for batch in data:
        straight.meta_train_step(batch)

    first = build(name, spec, seed=0, **options)
    for batch in data[:2]:
        first.meta_train_step(batch)
    state = saved_and_loaded(first.state_dict(), tmp_path / "state.npz")
    resumed = build(name, spec, seed=123, **options)  # different initial weights, overwritten by the state
    resumed.load_state_dict(state)
    for batch in data[2:]:
        resumed.meta_train_step(batch)

    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    support_x, support_y, query_x = data[0].support_x[0], data[0].support_y[0], data[0].query_x[0]
    np.testing.assert_array_equal(
        resumed.adapt(support_x, support_y).predict(query_x), straight.adapt(support_x, support_y).predict(query_x)
    )


def test_state_holds_the_documented_entries():
    maml = build("metasgd", SINUSOID).state_dict()
    assert {"model.features.0.weight", "model.head.bias", "inner.head.weight"} <= maml.keys()
    assert maml["model.features.0.weight"].shape == (16, 1)
    conv = build("finetune", IMAGES).state_dict()
    assert conv["model.features.0.conv.weight"].shape == (8, 1, 3, 3)
    assert conv["model.features.3.norm.weight"].shape == (8,)
    assert conv["pretrain.head.weight"].shape == (IMAGES.num_classes, 8)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in conv.values())


def test_learning_rate_schedule_is_saved_and_restored():
    data = batches(SINUSOID, 5)
    algorithm = build("maml", SINUSOID, optimizer="adam", lr=0.1, optimizer_options={"decay_every": 2})
    for batch in data:
        algorithm.meta_train_step(batch)
    state = algorithm.state_dict()
    assert float(state["optimizer.lr.0"]) == pytest.approx(0.1 * 0.5**2)
    assert int(state["optimizer.steps"]) == 5
    restored = build("maml", SINUSOID, optimizer="adam", lr=0.1, optimizer_options={"decay_every": 2})
    restored.load_state_dict(state)
    assert restored.optimizer.param_groups[0]["lr"] == algorithm.optimizer.param_groups[0]["lr"]
    assert restored.optimizer.steps_taken == 5


def test_mismatched_state_is_a_clear_error():
    state = build("maml", SINUSOID).state_dict()
    other = build("maml", SINUSOID, model=None)
    bad = dict(state, **{"model.head.weight": np.zeros((3, 3))})
    with pytest.raises(ConfigError, match="model.head.weight.*shape"):
        other.load_state_dict(bad)
    with pytest.raises(ConfigError, match="no entry 'model.head.bias'"):
        other.load_state_dict({k: v for k, v in state.items() if k != "model.head.bias"})

"""State as plain numpy arrays: save without pickle, resume exactly, no retracing per step."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug_tensorflow.optimizers import Adam


@pytest.mark.parametrize(
    "name, data",
    [
        ("metasgd", "sinusoid_batches"),
        ("finetune", "image_batches"),
        ("protonet", "image_batches"),
    ],
)
def test_resume_from_saved_state_continues_exactly(request, make, tmp_path, name, data):
    spec, batches = request.getfixturevalue(data)
    optimizer = functools.partial(Adam, lr=0.01, decay_every=2, decay_rate=0.5)
    kwargs = {"dtype": "float32", "optimizer": optimizer, "batching": "loop"}
    original = make(name, spec, **kwargs)
    for batch in batches[:2]:
        original.meta_train_step(batch)
    np.savez(tmp_path / "state.npz", **original.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as stored:
        state = dict(stored)
    assert int(state["optimizer.steps"]) == 2
    expected_prefixes = {"model", "optimizer"} | {"metasgd": {"inner"}, "finetune": {"pretrain"}}.get(name, set())
    assert {k.split(".")[0] for k in state} == expected_prefixes

    resumed = make(name, spec, seed=99, **kwargs)  # different initial weights, overwritten by the state
    resumed.load_state_dict(state)
    batch = batches[2]
    p1 = original.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
    p2 = resumed.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
    assert np.array_equal(p1, p2)
    for batch in batches[2:]:
        assert original.meta_train_step(batch) == resumed.meta_train_step(batch)
    a, b = original.state_dict(), resumed.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_meta_steps_trace_once(make, sinusoid_batches):
    spec, batches = sinusoid_batches
    algorithm = make("maml", spec, dtype="float32")
    for batch in batches * 2:
        algorithm.meta_train_step(batch)
        algorithm.evaluate(batch)
    assert algorithm._train_fn.experimental_get_tracing_count() == 1
    assert algorithm._evaluate_fn.experimental_get_tracing_count() == 1


def test_state_dict_uses_the_shared_layout(make, image_batches):
    spec, _ = image_batches
    state = make("maml", spec).state_dict()
    assert state["model.features.0.conv.weight"].shape == (4, 1, 3, 3)
    assert state["model.features.1.conv.weight"].shape == (4, 4, 3, 3)
    assert state["model.head.weight"].shape == (3, 4)
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_mismatched_state_is_a_config_error(make, sinusoid_batches, image_batches):
    spec, _ = sinusoid_batches
    algorithm = make("maml", spec)
    state = algorithm.state_dict()
    with pytest.raises(ConfigError, match="missing model.head.bias"):
        algorithm.load_state_dict({k: v for k, v in state.items() if k != "model.head.bias"})
    with pytest.raises(ConfigError, match="has shape"):
        algorithm.load_state_dict({**state, "model.head.bias": np.zeros(3)})
    with pytest.raises(ConfigError, match="unexpected inner"):
        algorithm.load_state_dict(make("metasgd", spec).state_dict())

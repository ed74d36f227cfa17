"""Task samplers: shapes, statistics, determinism, state; the generic N-way K-shot episodes."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug.tasks import LabelledArrays, NWayKShot, SinusoidSampler, split_rng
from metaplug.tasks.sinusoid import sinusoid


def test_sinusoid_shapes_and_ranges():
    batch = SinusoidSampler(seed=3, shots=5, queries=7).sample(400)
    assert batch.support_x.shape == (400, 5, 1) and batch.query_y.shape == (400, 7, 1)
    assert batch.support_x.dtype == np.float32 and batch.problem == "regression"
    amplitude, phase = batch.params["amplitude"], batch.params["phase"]
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0 and amplitude.std() > 1.0
    assert phase.min() >= 0.0 and phase.max() <= np.pi
    assert np.abs(batch.query_x).max() <= 5.0
    expected = sinusoid(batch.support_x, amplitude[:, None, None], phase[:, None, None])
    np.testing.assert_allclose(batch.support_y, expected, atol=1e-5)


def test_sinusoid_is_deterministic_and_splits_differ():
    a, b = SinusoidSampler(seed=1).sample(4), SinusoidSampler(seed=1).sample(4)
    np.testing.assert_array_equal(a.support_x, b.support_x)
    test = SinusoidSampler(split="test", seed=1).sample(4)
    assert not np.allclose(a.params["amplitude"], test.params["amplitude"])


def test_sampler_state_round_trip():
    sampler = SinusoidSampler(seed=5)
    sampler.sample(3)
    state = sampler.state_dict()
    expected = sampler.sample(3)
    other = SinusoidSampler(seed=99)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.sample(3).query_y, expected.query_y)


@pytest.mark.parametrize(
    "kwargs", [{"shots": 0}, {"queries": -1}, {"amplitude": (2.0, 1.0)}, {"split": "dev"}, {"seed": -1}]
)
def test_sinusoid_rejects_bad_options(kwargs):
    with pytest.raises(ConfigError):
        SinusoidSampler(**kwargs)


def make_dataset(classes=10, per_class=6):
    x = np.arange(classes * per_class, dtype=np.float32).reshape(-1, 1)
    y = np.repeat(np.arange(classes), per_class)
    return LabelledArrays(x, y)


def test_nway_kshot_episodes():
    dataset = make_dataset()
    batch = NWayKShot(dataset, ways=4, shots=2, queries=3, rng=split_rng(0, "train")).sample(50)
    assert batch.support_x.shape == (50, 8, 1) and batch.query_x.shape == (50, 12, 1)
    assert batch.support_y.dtype == np.int64 and set(np.unique(batch.query_y)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(batch.support_y[0], [0, 0, 1, 1, 2, 2, 3, 3])
    for t in range(50):
        assert len(set(batch.classes[t])) == 4
        for way in range(4):
            support = batch.support_x[t][batch.support_y[t] == way].ravel()
            query = batch.query_x[t][batch.query_y[t] == way].ravel()
            # every example belongs to its episode class, support and query never overlap
            assert set((np.concatenate([support, query]) // 6).astype(int)) == {batch.classes[t, way]}
            assert not set(support) & set(query)
    assert len(np.unique(batch.classes)) == 10  # all classes get drawn


def test_nway_kshot_rejects_impossible_episodes():
    with pytest.raises(ConfigError, match="exceeds the 10 classes"):
        NWayKShot(make_dataset(), ways=11, shots=1, queries=1, rng=split_rng(0, "train"))
    with pytest.raises(ConfigError, match="smallest class"):
        NWayKShot(make_dataset(), ways=2, shots=4, queries=3, rng=split_rng(0, "train"))

"""``batching = "auto"`` is measured on the first step (on a fake clock here), cached, and
leaves no trace: the run equals one that named the chosen mode, bit for bit."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from metaplug.contract import calibration
from metaplug_tensorflow.optimizers import Adam


class ModeClock:
    """A clock on which a step of ``algorithm`` costs what its current mode costs."""

    def __init__(self, algorithm, costs: dict[str, float]) -> None:
        self.algorithm, self.costs, self.now, self.calls = algorithm, costs, 0.0, 0

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.costs[self.algorithm.mode]
        return self.now


@pytest.mark.parametrize(
    "data", ["sinusoid_batches", pytest.param("image_batches", marks=pytest.mark.slow)]
)  # conv4: four more traces, about 15 s of CPU
def test_the_measured_mode_trains_bit_for_bit_as_that_mode_named(request, make, monkeypatch, tmp_path, data):
    monkeypatch.setenv(calibration.ENV, "1")
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path))
    spec, batches = request.getfixturevalue(data)
    adam = functools.partial(Adam, lr=0.01)
    auto = make("maml", spec, dtype="float32", optimizer=adam, inner_lr=0.1)
    rule = auto.mode
    other = "loop" if rule == "vectorized" else "vectorized"
    auto.evaluate(batches[0], steps=1)  # traced with the rule's mode before the mode is settled
    clock = ModeClock(auto, {rule: 1.0, other: 0.01})
    monkeypatch.setattr(calibration, "CLOCK", clock)
    named = make("maml", spec, dtype="float32", optimizer=adam, inner_lr=0.1, batching=other)
    for batch in batches[:3]:
        auto.meta_train_step(batch)
        named.meta_train_step(batch)
    assert (auto.mode, auto.batching_choice.how) == (other, "calibrated") and clock.calls
    for key, value in named.state_dict().items():
        assert np.array_equal(auto.state_dict()[key], value), key
    for key, value in named.evaluate(batches[3], steps=1).items():
        assert np.array_equal(auto.evaluate(batches[3], steps=1)[key], value), key

    again = make("maml", spec, dtype="float32", optimizer=adam, inner_lr=0.1)
    clock = ModeClock(again, {rule: 0.01, other: 1.0})
    monkeypatch.setattr(calibration, "CLOCK", clock)
    choice = again.settle_batching(batches[0])
    assert (choice.mode, choice.how, clock.calls) == (other, "cached", 0)

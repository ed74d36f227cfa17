"""``batching = "auto"`` is measured on the first step (on a fake clock here), cached, and
leaves no trace: the run equals one that named the chosen mode, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_helpers import IMAGES, SINUSOID, build, image_batch, regression_batch

from metaplug.contract import calibration


class ModeClock:
    """A clock on which a step of ``algorithm`` costs what its current mode costs."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.costs, self.now, self.calls, self.algorithm = costs, 0.0, 0, None

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.costs[self.algorithm.mode]
        return self.now


@pytest.fixture
def calibrating(monkeypatch, tmp_path):
    monkeypatch.setenv(calibration.ENV, "1")
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path))

    def install(algorithm, costs):
        clock = ModeClock(costs)
        clock.algorithm = algorithm
        monkeypatch.setattr(calibration, "CLOCK", clock)
        return clock

    return install


@pytest.mark.parametrize("spec", [SINUSOID, IMAGES], ids=["mlp", "conv4"])
def test_the_measured_mode_trains_bit_for_bit_as_that_mode_named(calibrating, spec):
    batches = [image_batch(tasks=3, seed=s) if spec is IMAGES else regression_batch(seed=s) for s in range(3)]
    rule = "vectorized" if spec is SINUSOID else "loop"
    other = "loop" if rule == "vectorized" else "vectorized"
    auto = build("maml", spec, dtype=torch.float32, first_order=False)
    assert auto.mode == rule and auto.batching_choice is None
    clock = calibrating(auto, {rule: 1.0, other: 0.01})
    named = build("maml", spec, dtype=torch.float32, first_order=False, batching=other)
    for batch in batches:
        auto.meta_train_step(batch)
        named.meta_train_step(batch)
    assert (auto.mode, auto.batching_choice.how) == (other, "calibrated") and clock.calls
    assert named.batching_choice.how == "requested"
    for key, value in named.state_dict().items():
        assert np.array_equal(auto.state_dict()[key], value), key
    assert auto.training_step == named.training_step == 3

    again = build("maml", spec, dtype=torch.float32, first_order=False)
    clock = calibrating(again, {rule: 0.01, other: 1.0})
    choice = again.settle_batching(batches[0])
    assert (choice.mode, choice.how, clock.calls) == (other, "cached", 0)


def test_settling_without_a_batch_takes_the_rule_and_native_batch_norm_is_never_vectorized(calibrating):
    algorithm = build("maml", SINUSOID)
    calibrating(algorithm, {"loop": 0.01, "vectorized": 1.0})
    choice = algorithm.settle_batching(None, why="not measured: resumed")
    assert (choice.mode, choice.how, choice.detail) == ("vectorized", "rule", "not measured: resumed")
    assert algorithm.settle_batching(regression_batch()) is choice  # settled once

    native = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False), torch.nn.Flatten()
    )
    native.append(torch.nn.Linear(4 * 14 * 14, 3))
    learner = build("maml", IMAGES, model=native)
    clock = calibrating(learner, {"loop": 1.0, "vectorized": 0.01})
    choice = learner.settle_batching(image_batch())
    assert (choice.mode, choice.how, clock.calls) == ("loop", "rule", 0)

"""MAML++ and the stateful inner rules on TensorFlow: resuming continues the schedules exactly,
a scheduled outer optimizer is refused with one line, and a short sinusoid run learns.
(Meta-gradients equal metaplug-torch's to 1e-9 in float64: tests/test_parity_mamlpp.py.)"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import ConfigError
from metaplug.tasks import SinusoidSampler
from metaplug_tensorflow.algorithms import MAML, MAMLPlusPlus
from metaplug_tensorflow.backend import Backend
from metaplug_tensorflow.optimizers import Adam

SCHEDULES = {"inner_steps": 2, "multi_step_loss_steps": 2, "first_order_steps": 1, "cosine_steps": 3}


def build(cls, sampler, lr=1e-3, optimizer_options=None, **hyper):
    backend = Backend()
    backend.seed(0)
    model = backend.build_model(ModelSpec("mlp", (1,), 1, {"hidden": (16, 16)}))
    optimizer = functools.partial(Adam, lr=lr, **(optimizer_options or {}))
    return cls(backend=backend, model=model, spec=sampler.spec, optimizer=optimizer, **hyper)


def test_resumed_mamlpp_continues_its_schedules_exactly():
    sampler = SinusoidSampler("train", seed=0, shots=5, queries=5)
    batches = [sampler.sample(3) for _ in range(4)]
    algorithm = build(MAMLPlusPlus, sampler, **SCHEDULES)
    for batch in batches[:2]:  # first order with both losses, then second order annealing
        algorithm.meta_train_step(batch)
    state = algorithm.state_dict()
    assert int(state["mamlpp.steps"]) == 2
    assert state["lslr.head.weight"].shape == (2,)
    resumed = build(MAMLPlusPlus, sampler, **SCHEDULES)
    resumed.load_state_dict(state)
    for batch in batches[2:]:
        assert resumed.meta_train_step(batch) == algorithm.meta_train_step(batch)
    assert float(resumed.optimizer.rate.numpy()) == pytest.approx(1e-5)  # the cosine ended at min_outer_lr
    assert len(algorithm._train_variants) == 3  # (first, both losses), (second, both), (second, last only)


def test_cosine_annealing_refuses_a_scheduled_optimizer():
    sampler = SinusoidSampler("train", seed=0)
    with pytest.raises(ConfigError, match="cosine_annealing"):
        build(MAMLPlusPlus, sampler, optimizer_options={"final_lr": 0.0, "anneal_steps": 10})


@pytest.mark.slow  # the same computation as metaplug-torch's test, which runs by default
@pytest.mark.parametrize("cls, options", [(MAMLPlusPlus, {}), (MAML, {"inner_rule": "inner-adam", "inner_steps": 5})])
def test_adaptation_learns_the_sinusoid(cls, options):
    """As on torch: on the typical test task adapting clearly beats not adapting."""
    sampler = SinusoidSampler("train", seed=0, shots=10, queries=10)
    algorithm = build(cls, sampler, inner_lr=0.01, **options)
    for _ in range(300):
        algorithm.meta_train_step(sampler.sample(25))
    result = algorithm.evaluate(SinusoidSampler("test", seed=1, shots=10, queries=10).sample(100))
    assert np.median(result["loss"]) < 0.75 * np.median(result["loss_before"])
    assert np.mean(result["loss"] < result["loss_before"]) > 0.75

"""The host's MAML++ schedules (metaplug.contract.mamlpp) and the outer optimizers' cosine
annealing, which both backends use as they are: plain Python, checked against the paper's
formulas written out here."""

from __future__ import annotations

import math

import pytest

from metaplug.contract import mamlpp
from metaplug.contract.hyperparameters import AdamOptions, MAMLPlusPlusOptions
from metaplug.contract.schedules import learning_rate, with_cosine_annealing
from metaplug.errors import ConfigError


def paper_importance(steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """Antoniou et al.'s get_per_step_loss_importance_vector, in plain Python."""
    weights = [1.0 / steps] * steps
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    for i in range(steps - 1):
        weights[i] = max(weights[i] - epoch * decay, floor)
    weights[-1] = min(weights[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


@pytest.mark.parametrize("epoch", [0, 1, 3, 7, 9])
def test_multi_step_loss_weights_are_the_papers_at_each_epoch(epoch):
    options = MAMLPlusPlusOptions.parse({"inner_steps": 5, "multi_step_loss_steps": 10 * 500})
    ours = mamlpp.multi_step_loss_weights(options, epoch * 500)
    assert ours == pytest.approx(paper_importance(5, epoch, 10), abs=1e-15)
    assert sum(ours) == pytest.approx(1.0)


def test_after_the_annealing_or_without_it_only_the_last_step_counts():
    options = MAMLPlusPlusOptions.parse({"inner_steps": 3, "multi_step_loss_steps": 10})
    assert mamlpp.multi_step_loss_weights(options, 10) == [0.0, 0.0, 1.0]
    off = MAMLPlusPlusOptions.parse({"inner_steps": 3, "multi_step_loss": False})
    assert mamlpp.multi_step_loss_weights(off, 0) == [0.0, 0.0, 1.0]
    one = MAMLPlusPlusOptions.parse({"inner_steps": 1})
    assert mamlpp.multi_step_loss_weights(one, 0) == [1.0]


def test_derivative_order_annealing():
    options = MAMLPlusPlusOptions.parse({"first_order_steps": 2})
    assert [mamlpp.second_order_now(options, s) for s in range(4)] == [False, False, True, True]
    always = MAMLPlusPlusOptions.parse({"first_order": True})
    assert not mamlpp.second_order_now(always, 100)


def test_batch_norm_names_follow_the_standard_layout():
    names = [
        "features.0.conv.weight",
        "features.0.norm.weight",
        "features.0.norm.bias",
        "layer1.norm2.weight",
        "layer1.shortcut.norm.bias",
        "head.weight",
        "normal.weight",  # not a batch norm: only "norm" and "norm<digits>" modules are
        "features.0.norm.running_mean",
    ]
    assert mamlpp.batch_norm_names(names) == names[1:5]
    assert mamlpp.step_index(7, 5) == 4 and mamlpp.step_index(2, 5) == 2


def test_cosine_annealing_of_the_outer_rate():
    options = with_cosine_annealing(AdamOptions.parse({}), 1e-5, 100)
    rates = [learning_rate(1e-3, s, options) for s in (0, 50, 100, 200)]
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * min(s / 100, 1))) / 2 for s in (0, 50, 100, 200)]
    assert rates == pytest.approx(expected, rel=1e-15)
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5)
    linear = AdamOptions.parse({"final_lr": 0.0, "anneal_steps": 100})
    assert learning_rate(1.0, 50, linear) == pytest.approx(0.5)
    cosine = AdamOptions.parse({"final_lr": 0.0, "anneal_steps": 100, "anneal": "cosine"})
    assert learning_rate(1.0, 25, cosine) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_cosine_annealing_refuses_an_optimizer_with_a_schedule():
    with pytest.raises(ConfigError, match="cosine_annealing sets the outer optimizer's schedule"):
        with_cosine_annealing(AdamOptions.parse({"decay_every": 10}), 1e-5, 100)
    with pytest.raises(ConfigError, match="anneal"):
        AdamOptions.parse({"anneal": "exponential"})


def test_anneal_outer_rate_needs_a_metaplug_optimizer():
    class Plain:
        pass

    with pytest.raises(ConfigError, match="cosine_annealing needs one of metaplug's outer optimizers"):
        mamlpp.anneal_outer_rate(Plain(), MAMLPlusPlusOptions.parse({}))


def test_mamlpp_refuses_recompute_inner_in_one_line():
    with pytest.raises(
        ConfigError, match=r"^mamlpp does not recompute its inner steps .*: set recompute_inner = false$"
    ):
        MAMLPlusPlusOptions(recompute_inner=True)

"""What MAML++ (Antoniou et al. 2019) computes the same way on every backend: the
multi-step loss weights, the derivative order of a meta-step, which weights are batch
norm's, and the cosine annealing of the outer rate.

Every value is a Python number of the meta-steps already taken, so the torch and
TensorFlow implementations use identical ones and a resumed run continues exactly.
"""

from __future__ import annotations

import re
from typing import Any

from metaplug.contract.hyperparameters import MAMLPlusPlusOptions, ScheduleOptions
from metaplug.contract.schedules import with_cosine_annealing
from metaplug.errors import ConfigError

_NORM = re.compile(r"norm\d*")

MSL_FLOOR = 0.03
"""The non-final steps' weights end at ``MSL_FLOOR / inner_steps`` (the paper's code)."""


def multi_step_loss_weights(options: MAMLPlusPlusOptions, steps_taken: int) -> list[float]:
    """The weight of the query loss after each of the ``inner_steps`` steps in the meta-objective.

    With ``multi_step_loss`` and ``steps_taken < multi_step_loss_steps``, with ``N`` inner steps
    and ``f = steps_taken / multi_step_loss_steps``: every step starts at ``1/N``; the first
    ``N - 1`` decay as ``max(1/N - f/N, 0.03/N)`` and the last grows as ``min(1/N + f (N-1)/N,
    1 - (N-1) 0.03/N)`` (Antoniou et al.'s ``get_per_step_loss_importance_vector``, with the
    epoch fraction ``epoch / multi_step_loss_num_epochs`` as ``f``). Otherwise only the last
    step's loss counts: ``[0, ..., 0, 1]``.
    """
    n = options.inner_steps
    if not options.multi_step_loss or steps_taken >= options.multi_step_loss_steps:
        return [0.0] * (n - 1) + [1.0]
    decay = steps_taken / options.multi_step_loss_steps / n
    floor = MSL_FLOOR / n
    weights = [max(1.0 / n - decay, floor) for _ in range(n - 1)]
    return [*weights, min(1.0 / n + decay * (n - 1), 1.0 - (n - 1) * floor)]


def second_order_now(options: MAMLPlusPlusOptions, steps_taken: int) -> bool:
    """Whether this meta-step differentiates through the inner gradients: not with
    ``first_order``, and with derivative-order annealing not during the first
    ``first_order_steps`` meta-steps."""
    return not options.first_order and steps_taken >= options.first_order_steps


def step_index(step: int, inner_steps: int) -> int:
    """The per-step parameters (rates, batch norm) that inner step ``step`` (from 0) uses: its
    own, or the last ones for the steps past ``inner_steps`` (``test_inner_steps`` larger)."""
    return min(step, inner_steps - 1)


def batch_norm_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The batch-norm weights and biases among a model's parameter names: those of a module
    named ``norm`` or ``norm`` and a number (``features.0.norm.weight``, ``layer1.norm2.bias``,
    ``layer1.shortcut.norm.bias``: the standard models' layout, docs/models.md)."""
    found = []
    for name in names:
        parts = name.split(".")
        if len(parts) >= 2 and _NORM.fullmatch(parts[-2]) and parts[-1] in ("weight", "bias"):
            found.append(name)
    return found


def anneal_outer_rate(optimizer: Any, options: MAMLPlusPlusOptions) -> None:
    """Give ``optimizer`` (one of metaplug's outer optimizers: it has ``options``, a
    :class:`ScheduleOptions`, and ``schedule()``) MAML++'s cosine annealing from its rate to
    ``min_outer_lr`` over ``cosine_steps`` meta-steps."""
    current = getattr(optimizer, "options", None)
    if not isinstance(current, ScheduleOptions) or not callable(getattr(optimizer, "schedule", None)):
        raise ConfigError(
            f"cosine_annealing needs one of metaplug's outer optimizers (sgd, adam, rmsprop), got "
            f"{type(optimizer).__name__}; set cosine_annealing = false"
        )
    optimizer.options = with_cosine_annealing(current, options.min_outer_lr, options.cosine_steps)
    optimizer.schedule()

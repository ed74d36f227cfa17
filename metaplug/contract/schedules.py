"""Learning-rate schedules of the outer optimizers, computed once for every backend.

Both schedules are functions of the number of steps already taken, evaluated in Python
floats (float64) before each step, so torch and TensorFlow use bit-identical rates and a
resumed run continues exactly from its saved step count.
"""

from __future__ import annotations

import dataclasses
import math

from metaplug.contract.hyperparameters import ScheduleOptions
from metaplug.errors import ConfigError


def learning_rate(lr: float, steps_taken: int, options: ScheduleOptions) -> float:
    """The rate for the next step after ``steps_taken`` steps that started at ``lr``.

    Step decay: ``lr * decay_rate ** (steps_taken // decay_every)`` (ProtoNets: halve every
    2000 episodes). Linear annealing: ``frac * final_lr + (1 - frac) * lr`` with
    ``frac = min(steps_taken / anneal_steps, 1)``, as supervised-reptile's ``train.py``
    anneals the meta step size; with ``anneal = "cosine"``, ``final_lr + (lr - final_lr) *
    (1 + cos(pi * frac)) / 2`` (PyTorch's ``CosineAnnealingLR`` over ``anneal_steps``, as
    MAML++ anneals its outer rate). Neither: ``lr``.
    """
    if options.final_lr is not None:
        frac = min(steps_taken / options.anneal_steps, 1.0)
        if options.anneal == "cosine":
            return options.final_lr + (lr - options.final_lr) * (1 + math.cos(math.pi * frac)) / 2
        return frac * options.final_lr + (1 - frac) * lr
    if options.decay_every:
        return lr * options.decay_rate ** (steps_taken // options.decay_every)
    return lr


def with_cosine_annealing(options: ScheduleOptions, final_lr: float, steps: int) -> ScheduleOptions:
    """``options`` with cosine annealing to ``final_lr`` over ``steps`` steps, for an algorithm
    that anneals its outer rate itself (MAML++); a :class:`~metaplug.errors.ConfigError` if the
    optimizer already has a schedule of its own."""
    if not options.constant:
        raise ConfigError(
            "cosine_annealing sets the outer optimizer's schedule, but the optimizer has one already "
            "(decay_every or final_lr); remove it or set cosine_annealing = false"
        )
    return dataclasses.replace(options, final_lr=final_lr, anneal_steps=steps, anneal="cosine")

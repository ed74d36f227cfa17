"""Learning-rate schedules of the outer optimizers, computed once for every backend.

Both schedules are functions of the number of steps already taken, evaluated in Python
floats (float64) before each step, so torch and TensorFlow use bit-identical rates and a
resumed run continues exactly from its saved step count.
"""

from __future__ import annotations

from metaplug.contract.hyperparameters import ScheduleOptions


def learning_rate(lr: float, steps_taken: int, options: ScheduleOptions) -> float:
    """The rate for the next step after ``steps_taken`` steps that started at ``lr``.

    Step decay: ``lr * decay_rate ** (steps_taken // decay_every)`` (ProtoNets: halve every
    2000 episodes). Linear annealing: ``frac * final_lr + (1 - frac) * lr`` with
    ``frac = min(steps_taken / anneal_steps, 1)``, as supervised-reptile's ``train.py``
    anneals the meta step size. Neither: ``lr``.
    """
    if options.final_lr is not None:
        frac = min(steps_taken / options.anneal_steps, 1.0)
        return frac * options.final_lr + (1 - frac) * lr
    if options.decay_every:
        return lr * options.decay_rate ** (steps_taken // options.decay_every)
    return lr

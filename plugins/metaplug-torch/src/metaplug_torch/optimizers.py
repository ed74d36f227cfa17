"""Outer optimizers (``sgd``, ``adam``, ``rmsprop``): ``torch.optim`` with the host's
options and learning-rate schedule, and their state as plain numpy arrays.

Each class is constructed as ``Cls(params, lr=..., **options)`` with the options the host
declares once for every backend (:mod:`metaplug.contract.hyperparameters`); before every
step the rate is :func:`metaplug.contract.schedules.learning_rate` of the steps taken
(step decay or linear annealing), so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from metaplug.contract.hyperparameters import AdamOptions, RMSpropOptions, ScheduleOptions, SGDOptions
from metaplug.contract.options import checked
from metaplug.contract.schedules import learning_rate
from metaplug.errors import ConfigError

PREFIX = "optimizer."


class Scheduled:
    """Mixed into a ``torch.optim`` optimizer: validated ``options`` and the schedule.

    ``steps_taken`` counts the steps; after each, every group's ``lr`` is set to the rate
    of the next step (so ``param_groups`` always shows the rate in use).
    """

    Options: ClassVar[type[ScheduleOptions]] = ScheduleOptions
    param_groups: list[dict[str, Any]]

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, **options: Any) -> None:
        self.options = self.Options.parse(options, owner=f"optimizer {type(self).__name__}")
        self.initial_lr = checked("lr", lr, float, minimum=0, exclusive=True)
        self.steps_taken = 0
        super().__init__(
            params,
            lr=self.initial_lr,
            weight_decay=self.options.weight_decay,  # type: ignore[call-arg]
            **self.torch_options(),
        )

    def torch_options(self) -> dict[str, Any]:
        """The ``torch.optim`` keywords besides ``lr`` and ``weight_decay``."""
        return {}

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)  # type: ignore[misc]
        self.steps_taken += 1
        self.schedule()
        return loss

    def schedule(self) -> None:
        """Set every group's rate for the step after ``steps_taken``."""
        for group in self.param_groups:
            group["lr"] = learning_rate(self.initial_lr, self.steps_taken, self.options)


class SGD(Scheduled, torch.optim.SGD):
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""

    Options = SGDOptions
    options: SGDOptions

    def torch_options(self) -> dict[str, Any]:
        return {"momentum": self.options.momentum, "nesterov": self.options.nesterov}


class Adam(Scheduled, torch.optim.Adam):
    """Adam (Kingma and Ba 2015), optionally AMSGrad."""

    Options = AdamOptions
    options: AdamOptions

    def torch_options(self) -> dict[str, Any]:
        return {"betas": self.options.betas, "eps": self.options.eps, "amsgrad": self.options.amsgrad, "foreach": False}


class RMSprop(Scheduled, torch.optim.RMSprop):
    """RMSprop (Hinton's lecture 6e; PyTorch's formulation), optionally centred and with momentum."""

    Options = RMSpropOptions
    options: RMSpropOptions

    def torch_options(self) -> dict[str, Any]:
        return {
            "alpha": self.options.alpha,
            "eps": self.options.eps,
            "momentum": self.options.momentum,
            "centered": self.options.centered,
            "foreach": False,
        }


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's state as ``optimizer.*`` numpy arrays (no pickled objects).

    Keys: ``optimizer.state.<param index>.<name>``, ``optimizer.lr.<group>`` and, for
    the optimizers here, ``optimizer.steps`` (the schedule's step count).
    """
    saved = optimizer.state_dict()
    arrays: dict[str, np.ndarray] = {}
    for index, state in saved["state"].items():
        for key, value in state.items():
            if value is None:
                continue
            value = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            arrays[f"{PREFIX}state.{index}.{key}"] = np.array(value, order="C", copy=True)
    for g, group in enumerate(optimizer.param_groups):
        arrays[f"{PREFIX}lr.{g}"] = np.asarray(group["lr"], dtype=np.float64)
    if isinstance(optimizer, Scheduled):
        arrays[f"{PREFIX}steps"] = np.asarray(optimizer.steps_taken, dtype=np.int64)
    return arrays


def load_optimizer_state(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]) -> None:
    """Restore what :func:`optimizer_state` saved."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if key.startswith(f"{PREFIX}state."):
            index, _, name = key[len(f"{PREFIX}state.") :].partition(".")
            state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
    groups = optimizer.state_dict()["param_groups"]
    for g, group in enumerate(groups):
        if f"{PREFIX}lr.{g}" in arrays:
            group["lr"] = float(arrays[f"{PREFIX}lr.{g}"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"optimizer state does not fit this optimizer: {exc}") from None
    if isinstance(optimizer, Scheduled) and f"{PREFIX}steps" in arrays:
        optimizer.steps_taken = int(arrays[f"{PREFIX}steps"])
        optimizer.schedule()

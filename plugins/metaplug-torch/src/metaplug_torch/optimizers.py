"""Outer optimizers (``sgd``, ``adam``, ``rmsprop``) with a step-decay or linear schedule,
and their state as plain numpy arrays.

Each factory is ``factory(params, *, lr, **options)`` and returns a
``torch.optim.Optimizer``. ``decay_every=N`` multiplies the learning rate by
``decay_rate`` after every ``N`` steps (ProtoNets: halve every 2000 episodes).
``final_lr=F, anneal_steps=N`` anneals it linearly from ``lr`` to ``F`` over ``N`` steps
(Reptile: step size 1.0 annealed to 0 over training).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from metaplug.errors import ConfigError

PREFIX = "optimizer."


class StepDecay:
    """Multiplies every group's learning rate by ``rate`` after each ``every`` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int, rate: float) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ConfigError(f"decay_every must be a non-negative integer, got {every!r}")
        if not 0.0 < float(rate) <= 1.0:
            raise ConfigError(f"decay_rate must be in (0, 1], got {rate!r}")
        self.every, self.rate, self.steps = every, float(rate), 0
        optimizer.register_step_post_hook(self._after_step)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        self.steps += 1
        if self.every and self.steps % self.every == 0:
            for group in optimizer.param_groups:
                group["lr"] *= self.rate


class LinearAnneal:
    """Sets every group's learning rate before step ``i`` (0-based) to
    ``frac * final + (1 - frac) * lr`` with ``frac = min(i / every, 1)``, as Nichol et al.'s
    ``train.py`` anneals the meta step size (``lr`` is the group's initial rate)."""

    def __init__(self, optimizer: torch.optim.Optimizer, final: float, every: int) -> None:
        if not isinstance(final, (int, float)) or isinstance(final, bool) or final < 0:
            raise ConfigError(f"final_lr must be a non-negative number, got {final!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"anneal_steps must be an integer >= 1 with final_lr, got {every!r}")
        self.final, self.every, self.steps = float(final), every, 0
        self.initial = [float(group["lr"]) for group in optimizer.param_groups]
        optimizer.register_step_post_hook(self._after_step)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        self.steps += 1
        frac = min(self.steps / self.every, 1.0)
        for group, lr in zip(optimizer.param_groups, self.initial):
            group["lr"] = frac * self.final + (1 - frac) * lr


def _scheduled(optimizer: torch.optim.Optimizer, decay_every: int, decay_rate: float,
               final_lr: float | None, anneal_steps: int) -> torch.optim.Optimizer:
    if final_lr is None and anneal_steps != 0:
        raise ConfigError(f"anneal_steps ({anneal_steps!r}) needs final_lr, the learning rate to anneal to")
    if final_lr is None:
        schedule: StepDecay | LinearAnneal = StepDecay(optimizer, decay_every, decay_rate)
    elif decay_every:
        raise ConfigError("final_lr (linear annealing) and decay_every (step decay) cannot be combined")
    else:
        schedule = LinearAnneal(optimizer, final_lr, anneal_steps)
    optimizer.metaplug_schedule = schedule  # type: ignore[attr-defined]
    return optimizer


def _check_lr(lr: float) -> float:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    return float(lr)


def sgd(params: Iterable[torch.Tensor], *, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0, decay_every: int = 0, decay_rate: float = 0.5,
        final_lr: float | None = None, anneal_steps: int = 0) -> torch.optim.Optimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum."""
    optimizer = torch.optim.SGD(params, lr=_check_lr(lr), momentum=momentum, nesterov=nesterov,
                                weight_decay=weight_decay)
    return _scheduled(optimizer, decay_every, decay_rate, final_lr, anneal_steps)


def adam(params: Iterable[torch.Tensor], *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, decay_every: int = 0,
         decay_rate: float = 0.5, final_lr: float | None = None, anneal_steps: int = 0) -> torch.optim.Optimizer:
    """Adam (Kingma and Ba 2015)."""
    optimizer = torch.optim.Adam(params, lr=_check_lr(lr), betas=tuple(betas), eps=eps,
                                 weight_decay=weight_decay, amsgrad=amsgrad, foreach=False)
    return _scheduled(optimizer, decay_every, decay_rate, final_lr, anneal_steps)


def rmsprop(params: Iterable[torch.Tensor], *, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8,
            momentum: float = 0.0, centered: bool = False, weight_decay: float = 0.0, decay_every: int = 0,
            decay_rate: float = 0.5, final_lr: float | None = None, anneal_steps: int = 0) -> torch.optim.Optimizer:
    """RMSprop (Hinton's lecture 6e; PyTorch's formulation)."""
    optimizer = torch.optim.RMSprop(params, lr=_check_lr(lr), alpha=alpha, eps=eps, momentum=momentum,
                                    centered=centered, weight_decay=weight_decay, foreach=False)
    return _scheduled(optimizer, decay_every, decay_rate, final_lr, anneal_steps)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's state as ``optimizer.*`` numpy arrays (no pickled objects).

    Keys: ``optimizer.state.<param index>.<name>``, ``optimizer.lr.<group>`` and,
    for the factories here, ``optimizer.steps`` (the schedule's step count).
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
    schedule = getattr(optimizer, "metaplug_schedule", None)
    if schedule is not None:
        arrays[f"{PREFIX}steps"] = np.asarray(schedule.steps, dtype=np.int64)
    return arrays


def load_optimizer_state(optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]) -> None:
    """Restore what :func:`optimizer_state` saved."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        if key.startswith(f"{PREFIX}state."):
            index, _, name = key[len(f"{PREFIX}state."):].partition(".")
            state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
    groups = optimizer.state_dict()["param_groups"]
    for g, group in enumerate(groups):
        if f"{PREFIX}lr.{g}" in arrays:
            group["lr"] = float(arrays[f"{PREFIX}lr.{g}"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"optimizer state does not fit this optimizer: {exc}") from None
    schedule = getattr(optimizer, "metaplug_schedule", None)
    if schedule is not None and f"{PREFIX}steps" in arrays:
        schedule.steps = int(arrays[f"{PREFIX}steps"])

"""Sinusoid meta-regression (Finn et al. 2017, section 5.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from metaplug.contract.interfaces import EpisodeBatch, TaskSpec
from metaplug.contract.options import Options, option
from metaplug.errors import ConfigError
from metaplug.tasks.episodes import check_positive, rng_state, set_rng_state, split_rng


def sinusoid(x: np.ndarray, amplitude: np.ndarray | float, phase: np.ndarray | float) -> np.ndarray:
    """The task function ``amplitude * sin(x - phase)``."""
    return amplitude * np.sin(x - phase)


@dataclass(frozen=True)
class SinusoidOptions(Options):
    """The sinusoid task distribution."""

    shots: int = option(10, minimum=1, help="support points per task")
    queries: int = option(10, minimum=1, help="query points per task")
    amplitude: tuple[float, float] = option((0.1, 5.0), help="range of the amplitude A")
    phase: tuple[float, float] = option((0.0, float(np.pi)), help="range of the phase")
    x_range: tuple[float, float] = option((-5.0, 5.0), help="range of the inputs x")

    def validate(self) -> None:
        for name in ("amplitude", "phase", "x_range"):
            low, high = getattr(self, name)
            if not low < high:
                raise ConfigError(f"{name} must be a (low, high) range with low < high, got {(low, high)}")


class SinusoidSampler:
    """Regression tasks ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``,
    ``x ~ U[-5, 5]``; ``shots`` support and ``queries`` query points per task.

    Splits draw from independent streams of the same distribution (there are
    infinitely many tasks, so no task is shared in practice).
    """

    Options = SinusoidOptions

    def __init__(self, split: str = "train", seed: int = 0, **options: Any) -> None:
        o = self.Options.parse(options, owner="task sampler 'sinusoid'")
        self.split, self.shots, self.queries = split, o.shots, o.queries
        self.amplitude, self.phase, self.x_range = o.amplitude, o.phase, o.x_range
        self.rng = split_rng(seed, split)
        self.spec = TaskSpec(problem="regression", input_shape=(1,), output_size=1, default_model="mlp")

    def sample(self, num_tasks: int) -> EpisodeBatch:
        check_positive(num_tasks=num_tasks)
        amplitude = self.rng.uniform(*self.amplitude, size=num_tasks)
        phase = self.rng.uniform(*self.phase, size=num_tasks)
        x = self.rng.uniform(*self.x_range, size=(num_tasks, self.shots + self.queries, 1))
        y = sinusoid(x, amplitude[:, None, None], phase[:, None, None])
        x, y = x.astype(np.float32), y.astype(np.float32)
        return EpisodeBatch(
            support_x=x[:, : self.shots],
            support_y=y[:, : self.shots],
            query_x=x[:, self.shots :],
            query_y=y[:, self.shots :],
            problem="regression",
            params={"amplitude": amplitude.astype(np.float32), "phase": phase.astype(np.float32)},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])

"""Model selection on validation: which validation is the best so far, and when to stop early."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from metaplug.errors import ConfigError


class BestTracker:
    """Follows ``monitor`` over validations: an improvement beats the best value by more than
    ``min_delta`` in direction ``mode`` (``min`` or ``max``); with ``patience`` N > 0, training
    should stop after N validations in a row without one. Part of every checkpoint (:meth:`state`)."""

    def __init__(self, monitor: str, mode: str, patience: int = 0, min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"train.monitor_mode must be min or max, got {mode!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.waited = 0
        """Validations since the last improvement."""

    def update(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Record the validation of ``step``; whether it is the best so far."""
        if self.monitor not in metrics:
            known = ", ".join(sorted(k for k in metrics if k != "elapsed"))
            raise ConfigError(f"train.monitor {self.monitor!r} is not a validation metric; validation reports: {known}")
        value = float(metrics[self.monitor])
        if math.isfinite(value) and self._improves(value):
            self.best, self.best_step, self.waited = value, step, 0
            return True
        self.waited += 1
        return False

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    @property
    def exhausted(self) -> bool:
        """Early stopping is on and ``patience`` validations passed without improvement."""
        return 0 < self.patience <= self.waited

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.waited = int(state.get("waited", 0))

    def describe(self) -> str:
        """``"no improvement of val accuracy in 3 validations (best 0.91 at step 400)"``."""
        best = f"best {self.best:.4g} at step {self.best_step}" if self.best is not None else "no finite value"
        return f"no improvement of val {self.monitor} in {self.waited} validations ({best})"

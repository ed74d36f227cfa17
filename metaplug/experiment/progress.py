"""A one-line progress bar with live metrics and ETA, drawn on stderr only when it is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBar:
    """``step 1200/4000 [######------] 30% loss 0.412 val 0.398 | 152 it/s ETA 00:18``.

    Redrawn at most ``refresh`` times a second; silent when ``enabled`` is false.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        width: int = 24,
        refresh: float = 8.0,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.total, self.start, self.width = total, start, width
        self.interval = 1.0 / refresh
        self.began = time.monotonic()
        self.last_draw = 0.0
        self.fields: dict[str, float] = {}
        self._shown = False

    def update(self, step: int, metrics: Mapping[str, float] | None = None, force: bool = False) -> None:
        if metrics:
            self.fields.update(metrics)
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < self.interval and step < self.total:
            return
        self.last_draw = now
        self.stream.write("\r" + self.line(step, now) + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def line(self, step: int, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        fraction = step / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"step {step}/{self.total} [{bar}] {100 * fraction:3.0f}%"
        text += "".join(f" {name} {value:.4g}" for name, value in self.fields.items())
        done, elapsed = step - self.start, now - self.began
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f" | {rate:.3g} it/s ETA {format_duration((self.total - step) / rate)}"
        return text

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

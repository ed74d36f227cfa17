"""Training progress on stderr: a bar drawn with rich on a terminal, else a plain line at
a modest interval (a log file, CI, ``nohup``), so a long run always shows signs of life.

``step 1200/4000 ━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 30% loss 0.412 val 0.398 152 it/s 0:00:18``
``step 1200/4000 (30%) loss 0.412 val 0.398 152 it/s ETA 00:18``
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``"05:07"``, or ``"1:02:03"`` from an hour on."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_rate(per_second: float) -> str:
    """``"4.44"``, ``"152"``, ``"2020"``: three significant digits, never an exponent."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``"loss 0.412 val 0.398"``."""
    return " ".join(f"{name} {value:.4g}" for name, value in metrics.items())


LINE_INTERVAL = 30.0
"""Seconds between plain progress lines when stderr is not a terminal."""


class ProgressBar:
    """Step, percentage, live metrics, rate and ETA of a run from ``start`` to ``total`` steps.

    ``enabled=None`` (the default): a rich bar when ``stream`` is a terminal (redrawn at most
    ``refresh`` times a second), else a plain line every ``interval`` seconds and one at the
    end; ``True``: the bar; ``False``: nothing (``--quiet``), rich not even imported.
    ``clock`` (default: a monotonic clock) times the rate, the ETA and the lines.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        refresh: float = 8.0,
        clock: Callable[[], float] | None = None,
        interval: float = LINE_INTERVAL,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.lines = enabled is None and not self.enabled
        self.total, self.start = total, start
        self.fields: dict[str, float] = {}
        self._progress: Any = None
        self.clock = clock or time.monotonic
        self.interval, self.started = interval, self.clock()
        self.last_line, self.step, self.step_printed = self.started, start, start
        if self.enabled:
            self._progress, self._task = _rich_progress(self.stream, total, start, refresh, clock)
            self._progress.start()

    def update(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
        if metrics:
            self.fields.update(metrics)
        self.step = step
        if self._progress is not None:
            self._progress.update(self._task, completed=step, metrics=format_metrics(self.fields))
        elif self.lines and self.clock() - self.last_line >= self.interval:
            self._print_line()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif self.lines and self.step != self.step_printed and self.last_line != self.started:
            self._print_line()  # the final state, when lines were printed before

    def line(self) -> str:
        """``step 1200/4000 (30%) loss 0.412 152 it/s ETA 00:18``."""
        elapsed = self.clock() - self.started
        done = self.step - self.start
        parts = [f"step {self.step}/{self.total} ({100 * self.step // max(self.total, 1)}%)"]
        if self.fields:
            parts.append(format_metrics(self.fields))
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            parts += [f"{format_rate(rate)} it/s", f"ETA {format_duration((self.total - self.step) / rate)}"]
        return " ".join(parts)

    def _print_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line, self.step_printed = self.clock(), self.step


def _rich_progress(
    stream: TextIO, total: int, start: int, refresh: float, clock: Callable[[], float] | None
) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Steps a second, over rich's recent window (``152 it/s``)."""

        def render(self, task: Task) -> Text:
            return Text(f"{format_rate(task.speed)} it/s" if task.speed else "", style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        """Time left at the current rate (``ETA 00:18``)."""

        def render(self, task: Task) -> Text:
            left = task.time_remaining
            return Text(f"ETA {format_duration(left)}" if left is not None else "", style="progress.remaining")

    progress = Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        TextColumn("{task.fields[metrics]}"),
        RateColumn(),
        EtaColumn(),
        console=Console(file=stream, force_terminal=True),
        refresh_per_second=refresh,
        redirect_stdout=False,
        redirect_stderr=True,  # warnings print above the bar; stdout stays untouched (it may be a file)
        get_time=clock,
    )
    task = progress.add_task("train", total=total, completed=start, metrics="")
    return progress, task


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

"""The training progress bar: rich on terminals, with step, metrics, rate and ETA; silent elsewhere."""

from __future__ import annotations

import io
import re

from metaplug.experiment.progress import ProgressBar, format_duration, format_rate

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_bar_shows_step_metrics_rate_and_eta_on_a_terminal():
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(100, start=0, enabled=True, stream=stream, clock=lambda: now[0])
    now[0] = 1.0
    bar.update(10, {"loss": 0.5})
    now[0] = 10.0
    bar.update(50, {"loss": 0.123456, "val": 0.3})
    bar.close()
    last = ANSI.sub("", stream.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("step 50/100 ") and " 50% " in last
    assert "loss 0.1235 val 0.3" in last
    assert "4.44 it/s" in last  # 40 steps in the 9 s between the two updates
    assert last.endswith("ETA 00:12")  # 50 steps left at 4.44 it/s: 11.25 s, rounded up


def test_a_resumed_run_counts_its_rate_from_where_it_resumed():
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(1000, start=900, enabled=True, stream=stream, clock=lambda: now[0])
    now[0] = 2.0
    bar.update(910)
    now[0] = 4.0
    bar.update(920)
    bar.close()
    last = ANSI.sub("", stream.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("step 920/1000") and "5 it/s" in last and "ETA 00:16" in last


def test_off_a_terminal_a_plain_line_comes_every_interval_and_quiet_prints_nothing():
    stream = io.StringIO()  # not a terminal: a log file, CI
    now = [0.0]
    bar = ProgressBar(100, stream=stream, clock=lambda: now[0], interval=30.0)
    bar.update(1, {"loss": 1.0})
    assert stream.getvalue() == "" and not bar.enabled  # no bar drawn, nothing yet
    now[0] = 31.0
    bar.update(31, {"loss": 0.5})
    now[0] = 40.0
    bar.update(40, {"loss": 0.25})  # within the interval: no line
    now[0] = 50.0
    bar.update(50)
    bar.close()  # the final state
    assert stream.getvalue().splitlines() == [
        "step 31/100 (31%) loss 0.5 1 it/s ETA 01:09",
        "step 50/100 (50%) loss 0.25 1 it/s ETA 00:50",
    ]
    quiet = io.StringIO()
    silent = ProgressBar(100, enabled=False, stream=quiet, clock=lambda: now[0])
    now[0] = 100.0
    silent.update(99, {"loss": 1.0})
    silent.close()
    assert quiet.getvalue() == "" and silent._progress is None


def test_a_short_run_off_a_terminal_prints_no_line():
    stream = io.StringIO()
    bar = ProgressBar(10, stream=stream)
    bar.update(10, {"loss": 1.0})
    bar.close()
    assert stream.getvalue() == ""


def test_durations_are_minutes_and_seconds_then_hours():
    assert format_duration(65) == "01:05"
    assert format_duration(3725) == "1:02:05"


def test_rates_have_no_exponent():
    assert [format_rate(r) for r in (4.444, 15.2, 152.4, 2020.4)] == ["4.44", "15.2", "152", "2020"]

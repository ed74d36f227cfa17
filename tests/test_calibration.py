"""``batching = "auto"`` chosen by measuring: the host's selection, cache and switches, on a fake clock."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from metaplug.contract import calibration
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError


class FakeMachine:
    """A clock and trial steps whose cost per mode is fixed: nothing is really timed."""

    def __init__(
        self, costs: dict[str, float], fail: dict[str, Exception] | None = None, warm_up: dict[str, float] | None = None
    ) -> None:
        self.costs, self.fail, self.warm_up = costs, fail or {}, dict(warm_up or {})
        self.now = 0.0
        self.steps: list[str] = []

    def clock(self) -> float:
        return self.now

    def trial(self, mode: str):
        if mode in self.fail:
            raise self.fail[mode]

        def step() -> None:
            self.steps.append(mode)
            self.now += self.costs[mode] + self.warm_up.pop(mode, 0.0)

        return step


def choose(machine: FakeMachine, tmp_path: Path, setting: str = "1", rule: str = "loop", **parts):
    env = {"METAPLUG_CACHE_DIR": str(tmp_path), calibration.ENV: setting}
    return calibration.choose(
        "auto",
        rule,
        ("loop", "vectorized"),
        {"model": "conv4", **parts},
        machine.trial,
        tasks=8,
        clock=machine.clock,
        env=env,
    )


def test_the_fastest_mode_is_chosen_cached_and_then_taken_from_the_cache(tmp_path):
    machine = FakeMachine({"loop": 0.5, "vectorized": 0.2})
    first = choose(machine, tmp_path)
    assert (first.mode, first.how) == ("vectorized", "calibrated")
    assert first.timings_ms == {"loop": 500.0, "vectorized": 200.0}
    assert first.describe().startswith("vectorized (calibrated: loop 500 ms, vectorized 200 ms per step of 8 tasks; ")
    assert first.describe().endswith(f"measured in {first.seconds:.1f} s)")
    assert machine.steps == ["loop"] * 3 + ["vectorized"] * 3  # one warm-up and two timed steps each
    cached = json.loads((tmp_path / calibration.CACHE_FILE).read_text())
    (entry,) = cached["entries"].values()
    assert entry["mode"] == "vectorized" and entry["model"] == "conv4" and entry["host"]

    again = FakeMachine({"loop": 0.1, "vectorized": 9.0})
    second = choose(again, tmp_path)
    assert (second.mode, second.how, again.steps) == ("vectorized", "cached", [])
    assert second.detail.startswith("loop 500 ms, vectorized 200 ms per step of 8 tasks; from ")
    redone = choose(again, tmp_path, setting="redo")
    assert (redone.mode, redone.how) == ("loop", "calibrated")
    assert choose(FakeMachine({}), tmp_path).mode == "loop"  # the redone choice replaced the cached one


def test_another_episode_shape_or_model_is_measured_again(tmp_path):
    choose(FakeMachine({"loop": 0.5, "vectorized": 0.2}), tmp_path, episodes=[[5, 1, 28, 28], 32])
    other = FakeMachine({"loop": 0.1, "vectorized": 0.2})
    assert choose(other, tmp_path, episodes=[[20, 1, 28, 28], 32]).how == "calibrated"
    assert other.steps


def test_off_and_a_single_eligible_mode_take_the_rule_without_timing(tmp_path):
    machine = FakeMachine({"loop": 0.5, "vectorized": 0.2})
    off = choose(machine, tmp_path, setting="0", rule="loop")
    assert (off.mode, off.how, off.detail) == ("loop", "rule", "METAPLUG_CALIBRATE=0")
    only = calibration.choose(
        "auto", "loop", ("loop",), {}, machine.trial, tasks=8, clock=machine.clock, env={calibration.ENV: "1"}
    )
    assert (only.mode, only.how) == ("loop", "rule")
    named = calibration.choose("vectorized", "loop", ("loop", "vectorized"), {}, machine.trial, tasks=8)
    assert (named.mode, named.how) == ("vectorized", "requested")
    assert machine.steps == [] and not (tmp_path / calibration.CACHE_FILE).exists()


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_bad_setting_is_one_line_naming_the_allowed_values(value):
    with pytest.raises(ConfigError, match=rf"^METAPLUG_CALIBRATE must be 1, 0 or redo, got '{value}'$"):
        calibration.setting({calibration.ENV: value})
    assert [calibration.setting({calibration.ENV: v}) for v in ("", "1", "OFF", "redo")] == ["on", "on", "off", "redo"]


def test_a_mode_that_lost_its_first_timed_step_is_not_timed_again(tmp_path):
    machine = FakeMachine({"loop": 0.1, "vectorized": 0.5})
    choice = choose(machine, tmp_path)
    assert choice.mode == "loop" and machine.steps == ["loop"] * 3 + ["vectorized"] * 2
    long = FakeMachine({"loop": 2.0, "vectorized": 1.5})
    assert choose(long, tmp_path / "other").mode == "vectorized"
    assert long.steps == ["loop", "loop", "vectorized", "vectorized"]  # warm-ups over a second: one timed step


def test_a_slow_warm_up_alone_does_not_lose(tmp_path):
    """A warm-up may compile (TensorFlow traces there): only timed steps are compared."""
    machine = FakeMachine({"loop": 0.1, "vectorized": 0.05}, warm_up={"vectorized": 0.9})
    assert choose(machine, tmp_path).mode == "vectorized"


def test_a_failing_mode_is_left_out_but_the_rules_own_failure_propagates(tmp_path):
    failing = FakeMachine({"loop": 0.5}, fail={"vectorized": RuntimeError("vmap: unsupported op\nmore")})
    choice = choose(failing, tmp_path)
    assert choice.mode == "loop"
    assert "; vectorized left out (RuntimeError: vmap: unsupported op); measured in " in choice.detail
    broken = FakeMachine({"vectorized": 0.1}, fail={"loop": ConfigError("examples have shape (3,)")})
    with pytest.raises(ConfigError, match="examples have shape"):
        choose(broken, tmp_path / "other")


def test_a_corrupt_cache_is_measured_again_and_an_unwritable_one_only_logged(tmp_path, caplog):
    (tmp_path / calibration.CACHE_FILE).write_text("{not json")
    assert choose(FakeMachine({"loop": 0.5, "vectorized": 0.2}), tmp_path).how == "calibrated"
    assert json.loads((tmp_path / calibration.CACHE_FILE).read_text())["format"] == calibration.FORMAT
    blocked = tmp_path / "file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="metaplug.calibration"):
        choice = choose(FakeMachine({"loop": 0.5, "vectorized": 0.2}), blocked)
    assert choice.mode == "vectorized" and "cannot write the batching cache" in caplog.text


def test_the_cache_lives_in_the_user_cache_folder():
    assert calibration.cache_path({"METAPLUG_CACHE_DIR": "/c"}) == Path("/c/batching.json")
    assert calibration.cache_path({"XDG_CACHE_HOME": "/x"}) == Path("/x/metaplug/batching.json")
    assert calibration.cache_path({}) == Path.home() / ".cache" / "metaplug" / "batching.json"


def test_the_timed_steps_run_a_small_batch_whole_and_the_first_tasks_of_a_large_one():
    batch = EpisodeBatch(
        np.zeros((32, 5, 1, 4, 4), np.float32),
        np.zeros((32, 5), np.int64),
        np.zeros((32, 75, 1, 4, 4), np.float32),
        np.zeros((32, 75), np.int64),
        "classification",
        np.zeros((32, 5), np.int64),
    )
    assert calibration.first_tasks(batch) is batch  # small: timed whole
    head = calibration.first_tasks(batch, whole=1000)
    assert head.num_tasks == calibration.TASKS and head.query_x.shape == (4, 75, 1, 4, 4)
    assert head.classes is not None and head.classes.shape == (4, 5)
    assert calibration.first_tasks(batch, 3, whole=0).num_tasks == 3

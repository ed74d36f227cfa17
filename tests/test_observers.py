"""Run observers: registered through ``register_observers``, called by the runner in order."""

from __future__ import annotations

import signal
import tomllib
from typing import ClassVar

import pytest
from test_experiment_runner import make_config, signalling_at

from metaplug import Component
from metaplug.contract.observers import RunObserver
from metaplug.contract.records import validate
from metaplug.errors import ConfigError, PluginError, UnknownComponentError
from metaplug.experiment import runner
from metaplug.experiment.metrics import read_rows
from metaplug.plugins import discovery as plugins
from metaplug.testing import ObserverConformance


class Recorder(RunObserver):
    """Writes down every call (a class attribute, since the host constructs the observer)."""

    calls: ClassVar[list[tuple]] = []

    def on_run_start(self, run):
        self.calls.append(("start", run.step, run.iterations, run.problem, run.resumed, run.config["seed"]))

    def on_train_metrics(self, step, metrics):
        self.calls.append(("train", step, sorted(metrics)))

    def on_validation(self, step, metrics, best):
        self.calls.append(("val", step, sorted(metrics), best))

    def on_checkpoint(self, step, name):
        self.calls.append(("checkpoint", step, name))

    def on_run_end(self, step, status, results):
        self.calls.append(("end", step, status, sorted(results)))


class Failing(RunObserver):
    def on_validation(self, step, metrics, best):
        raise OSError("disk quota exceeded")


def add_observer(name, cls) -> None:
    record = validate(Component(name=name, summary="A test observer.", target=lambda: cls), "observers")
    plugins.registry().add(record)


@pytest.fixture
def recorder(double):
    Recorder.calls = []
    add_observer("recorder", Recorder)
    return Recorder.calls


def test_the_runner_calls_observers_in_order(recorder, tmp_path):
    cfg = make_config(iterations=10, log_every=4, val_every=5, checkpoint_every=10, observers=["jsonl", "recorder"])
    runner.start(cfg, tmp_path / "run", progress=False).run()
    assert recorder == [
        ("start", 0, 10, "regression", False, 0),
        ("train", 4, ["elapsed", "loss"]),
        ("checkpoint", 5, "best"),
        ("val", 5, ["elapsed", "loss", "loss_before"], True),
        ("train", 8, ["elapsed", "loss"]),
        ("train", 10, ["elapsed", "loss"]),
        ("checkpoint", 10, "best"),
        ("val", 10, ["elapsed", "loss", "loss_before"], True),
        ("checkpoint", 10, "last"),
        ("end", 10, "completed", ["best", "elapsed_s", "problem", "step", "stopped_early", "test"]),
    ]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_a_resumed_run_starts_its_observers_at_the_checkpoint(recorder, tmp_path, monkeypatch):
    signalling_at(monkeypatch, 3, signal.SIGINT)
    cfg = make_config(iterations=6, val_every=0, test_tasks=0, observers=["recorder"])
    with pytest.raises(runner.TrainingInterrupted):
        runner.start(cfg, tmp_path / "run", progress=False).run()
    assert recorder[-2:] == [("checkpoint", 3, "last"), ("end", 3, "interrupted", [])]
    recorder.clear()  # the signal came on the third call only: the resumed run goes on
    runner.resume(tmp_path / "run", progress=False).run()
    assert recorder[0] == ("start", 3, 6, "regression", True, 0)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # jsonl was not chosen


def test_an_observer_failure_names_the_observer_and_still_ends_the_others(recorder, tmp_path):
    add_observer("failing", Failing)
    cfg = make_config(iterations=10, val_every=5, observers=["recorder", "failing"])
    with pytest.raises(PluginError, match="observer 'failing' failed in on_validation: OSError: disk quota exceeded"):
        runner.start(cfg, tmp_path / "run", progress=False).run()
    assert recorder[-1] == ("end", 5, "discarded", [])  # a new run without a checkpoint: the host removes it
    assert not (tmp_path / "run").exists()
    Recorder.calls.clear()
    cfg = make_config(iterations=10, val_every=5, checkpoint_every=2, observers=["recorder", "failing"])
    with pytest.raises(PluginError, match="observer 'failing' failed in on_validation"):
        runner.start(cfg, tmp_path / "kept", progress=False).run()
    assert recorder[-1] == ("end", 5, "failed", []) and (tmp_path / "kept" / "checkpoint").is_dir()


def test_observer_names_are_checked_before_anything_is_written(double, tmp_path):
    with pytest.raises(UnknownComponentError, match="unknown observer 'jsonn'. Did you mean 'jsonl'"):
        runner.start(make_config(observers=["jsonn"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_with_observers_adds_each_name_once(double):
    cfg = runner.with_observers(make_config(), ["tensorboard", "jsonl", "tensorboard"])
    assert cfg.train.observers == ("jsonl", "tensorboard")


def test_an_observer_that_is_not_a_run_observer_is_a_plugin_error(double, tmp_path):
    add_observer("plain", object)
    with pytest.raises(PluginError, match="is not a metaplug.contract.observers.RunObserver"):
        runner.start(make_config(observers=["plain"]), tmp_path / "run", progress=False)


def test_observers_are_listed_like_other_components(double):
    record = plugins.registry().get("observer", "jsonl")
    assert record.plugin == "metaplug" and record.kind == "observers"
    with pytest.raises(PluginError, match="observers do not declare backends"):
        validate(Component(name="x", summary="x", target="a:b", backends=("torch",)), "observers")


def test_a_resumed_run_can_add_an_observer(recorder, tmp_path, monkeypatch):
    signalling_at(monkeypatch, 3, signal.SIGINT)
    with pytest.raises(runner.TrainingInterrupted):
        runner.start(make_config(iterations=6, val_every=0, test_tasks=0), tmp_path / "run", progress=False).run()
    assert recorder == []
    trainer = runner.resume(tmp_path / "run", progress=False, observers=["recorder"])
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["train"]["observers"] == ["jsonl", "recorder"]
    trainer.run()
    assert recorder[0] == ("start", 3, 6, "regression", True, 0) and recorder[-1][:3] == ("end", 6, "completed")


class TestJsonlConformance(ObserverConformance):
    observer = "jsonl"

    def test_the_rows_of_a_resumed_run_follow_on(self, run_dir):
        self.test_an_interrupted_run_resumed_by_a_new_observer(run_dir)
        rows = read_rows(run_dir / "metrics.jsonl")
        assert [(r["step"], r["split"]) for r in rows] == [
            (5, "train"),
            (10, "train"),
            (10, "val"),
            (15, "train"),  # logged again by the resumed run: the first run's row 15 was dropped
            (20, "train"),
            (20, "val"),
        ]
        assert rows[3]["loss"] == 1 / 15 + 1.0 and rows[2]["best"] is True and "best" not in rows[5]


def test_a_run_whose_observer_is_gone_is_still_scored_but_not_resumed(recorder, tmp_path, monkeypatch):
    signalling_at(monkeypatch, 3, signal.SIGINT)
    cfg = make_config(iterations=6, val_every=0, test_tasks=0, observers=["recorder"])
    with pytest.raises(runner.TrainingInterrupted):
        runner.start(cfg, tmp_path / "run", progress=False).run()
    plugins.reset()  # a fresh process in which the observer's plugin is no longer installed
    experiment, saved = runner.restore(tmp_path / "run")
    assert saved.step == 3 and experiment.config.train.observers == ("recorder",)
    with pytest.raises(UnknownComponentError, match="unknown observer 'recorder'"):
        runner.resume(tmp_path / "run")


def test_an_observer_named_twice_is_a_config_error(double, tmp_path):
    with pytest.raises(ConfigError, match="train.observers names 'jsonl' twice"):
        runner.start(make_config(observers=["jsonl", "jsonl"]), tmp_path / "run", progress=False)


def test_an_observer_that_fails_to_start_still_hears_the_end(recorder, tmp_path):
    class FailingStart(RunObserver):
        def on_run_start(self, run):
            raise RuntimeError("no display")

    add_observer("failing-start", FailingStart)
    cfg = make_config(iterations=5, observers=["recorder", "failing-start"])
    with pytest.raises(PluginError, match="observer 'failing-start' failed in on_run_start: RuntimeError: no display"):
        runner.start(cfg, tmp_path / "run", progress=False).run()
    assert [call[0] for call in recorder] == ["start", "end"] and recorder[-1][2] == "discarded"

"""A run records what ``batching = "auto"`` was measured to mean, and resuming or evaluating it
runs that mode without measuring again: bit for bit the run that named it (torch, fake clock)."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from metaplug.contract import calibration
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import config, runner

pytest.importorskip("metaplug_torch")


def make_config(iterations: int, **algorithm) -> config.ExperimentConfig:
    raw = config.defaults()
    raw["backend"] = "torch"
    raw["device"] = "cpu"
    raw["model"]["name"] = "mlp"
    raw["model"]["hidden"] = [8, 8]
    raw["algorithm"] = {"name": "maml", "inner_lr": 0.01, **algorithm}
    raw["train"].update(
        {"iterations": iterations, "meta_batch_size": 4, "val_every": 0, "test_tasks": 2, "log_every": 2}
    )
    raw["evaluation"]["episodes"] = 2
    return config.from_dict(raw)


class ModeClock:
    """Costs per step of the run's algorithm by its current mode; counts its readings."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.costs, self.now, self.calls = costs, 0.0, 0
        self.algorithm = None

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.costs[self.algorithm.mode] if self.algorithm is not None else 0.0
        return self.now


@pytest.fixture
def clock(monkeypatch, tmp_path):
    monkeypatch.setenv(calibration.ENV, "1")
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))
    fake = ModeClock({"vectorized": 1.0, "loop": 0.01})  # the rule says vectorized for the MLP
    monkeypatch.setattr(calibration, "CLOCK", fake)
    from metaplug_torch.algorithms.base import MetaLearner

    settle = MetaLearner.settle_batching

    def watched(self, batch=None, why=""):
        fake.algorithm = self
        return settle(self, batch, why)

    monkeypatch.setattr(MetaLearner, "settle_batching", watched)
    return fake


def batching_saved(run_dir) -> str:
    return tomllib.loads((run_dir / "config.toml").read_text())["algorithm"]["batching"]


def test_the_measured_mode_is_saved_and_resume_runs_it_without_measuring(clock, tmp_path):
    named = runner.start(make_config(6, batching="loop"), tmp_path / "named", progress=False)
    assert named.experiment.batching.how == "requested"
    named.run()

    part = runner.start(make_config(3), tmp_path / "part", progress=False)
    assert (part.experiment.batching.mode, part.experiment.batching.how) == ("loop", "calibrated")
    assert part.experiment.algorithm.mode == "loop" and batching_saved(tmp_path / "part") == "loop"
    part.run()
    clock.calls, clock.costs = 0, {"vectorized": 0.01, "loop": 1.0}  # were it measured now, vectorized
    resumed = runner.resume(tmp_path / "part", iterations=6, progress=False)
    assert (resumed.experiment.algorithm.mode, resumed.experiment.batching.how) == ("loop", "requested")
    resumed.run()
    assert clock.calls == 0
    a, b = (checkpoints.load(tmp_path / d / "checkpoint").arrays for d in ("named", "part"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_run_saved_with_auto_resumes_with_the_rule_and_measuring_leaves_the_batches_alone(clock, tmp_path):
    first = runner.start(make_config(2), tmp_path / "first", progress=False)
    second = runner.start(make_config(2, batching="loop"), tmp_path / "second", progress=False)
    batches = [t.experiment.train_sampler.sample(4).support_x for t in (first, second)]
    np.testing.assert_array_equal(*batches)  # the measured batch was put back

    old = tmp_path / "old"
    runner.start(make_config(2), old, progress=False).run()
    text = (old / "config.toml").read_text().replace('batching = "loop"', 'batching = "auto"')
    (old / "config.toml").write_text(text)  # as saved before runs recorded the mode
    experiment, _ = runner.restore(old)
    assert (experiment.batching.mode, experiment.batching.how) == ("vectorized", "rule")

"""``--init-weights`` on the host, without a framework: reading safetensors, ``.npz`` and run
directories, matching names to the model's layout, the report, strictness, the
configuration and the CLI's one-line errors (the numpy test-double plugin's ``linear-maml``,
whose model is one weight vector ``model.weight`` of shape ``(3,)``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from doubles import DOUBLES
from safetensors.numpy import save_file

from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import config, runner, weights
from metaplug.experiment.components import build, check

SMALL = ["--backend", "numpy", "--algorithm", "linear-maml", "--meta-batch-size", "4", "--val-every", "0"]
START = np.array([0.5, -1.25, 2.0])


def metaplug(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """The CLI with the numpy double as its only plugin (no framework to import)."""
    path = os.pathsep.join(p for p in (str(DOUBLES), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "METAPLUG_PLUGINS": "double"}
    done = subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, env=env)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def make_config(**model) -> config.ExperimentConfig:
    raw = config.defaults()
    raw["backend"] = "numpy"
    raw["algorithm"] = {"name": "linear-maml", "inner_lr": 0.1}
    raw["train"].update({"iterations": 6, "meta_batch_size": 3, "val_every": 0, "test_tasks": 5, "log_every": 2})
    raw["model"].update(model)
    return config.from_dict(raw)


# -- matching and the report ----------------------------------------------------------------


def test_names_are_matched_to_the_layout_and_every_problem_is_reported():
    expected = {"features.0.weight": (4, 2), "features.0.bias": (4,), "head.weight": (3, 4), "head.bias": (3,)}
    found = {
        "features.0.weight": np.zeros((4, 2)),
        "features.0.bias": np.zeros(4),
        "head.weight": np.zeros((5, 4)),
        "fc.weight": np.zeros(2),
        "features.0.norm.running_mean": np.zeros(4),
    }
    usable, report = weights.match(expected, found, "w.npz")
    assert sorted(usable) == ["features.0.bias", "features.0.weight"]
    assert report.missing == ("head.bias",) and report.unexpected == ("fc.weight",)
    assert report.ignored == ("features.0.norm.running_mean",)  # running statistics: no counterpart
    assert [str(m) for m in report.misshaped] == ["head.weight is (5, 4), the model's (3, 4)"]
    assert report.summary() == (
        "initial weights: 2 of 4 model weights from w.npz; 1 missing (head.bias); 1 unexpected (fc.weight); "
        "1 mis-shaped (head.weight is (5, 4), the model's (3, 4))"
    )


def test_a_checkpoint_gives_its_model_entries_and_ignores_the_rest():
    found = {"model.head.bias": np.zeros(3), "optimizer.steps": np.asarray(4), "inner.head.bias": np.ones(3)}
    usable, report = weights.match({"head.bias": (3,)}, found, "run")
    assert list(usable) == ["head.bias"] and report.complete
    assert report.ignored == ("optimizer.steps", "inner.head.bias")


# -- files and runs into an algorithm ---------------------------------------------------------


@pytest.fixture
def learner(double):
    cfg = check(make_config())
    return build(cfg).algorithm


@pytest.mark.parametrize("kind", ["safetensors", "npz", "npz with prefix"])
def test_files_load_into_any_algorithm_through_its_state_dict(learner, tmp_path, kind):
    if kind == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({"weight": START.astype(np.float32)}, str(path))
    else:
        path = tmp_path / "w.npz"
        np.savez(path, **{"model.weight" if "prefix" in kind else "weight": START})
    report = weights.load(learner, path)
    assert report.complete and report.loaded == ("weight",)
    np.testing.assert_array_equal(learner.state_dict()["model.weight"], START)


def test_strict_loading_refuses_a_partial_file_and_loads_nothing(learner, tmp_path):
    np.savez(tmp_path / "w.npz", weight=START, extra=np.zeros(2))
    before = learner.state_dict()["model.weight"].copy()
    with pytest.raises(ConfigError, match=r"do not fit the model: 1 unexpected \(extra\); set init_weights_strict"):
        weights.load(learner, tmp_path / "w.npz")
    np.testing.assert_array_equal(learner.state_dict()["model.weight"], before)
    report = weights.load(learner, tmp_path / "w.npz", strict=False)
    assert not report.complete and report.unexpected == ("extra",)
    np.testing.assert_array_equal(learner.state_dict()["model.weight"], START)


def test_nothing_that_fits_is_an_error_even_when_not_strict(learner, tmp_path):
    np.savez(tmp_path / "w.npz", weight=np.zeros(4))
    with pytest.raises(ConfigError, match=r"no weight of init weights .* fits the model: 1 mis-shaped"):
        weights.load(learner, tmp_path / "w.npz", strict=False)


def test_unsafe_or_broken_files_are_one_line(learner, tmp_path):
    np.savez(tmp_path / "objects.npz", weight=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="object arrays are refused"):
        weights.load(learner, tmp_path / "objects.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ConfigError, match="cannot read init weights .*broken.safetensors as safetensors"):
        weights.load(learner, tmp_path / "broken.safetensors")
    (tmp_path / "broken.npz").write_bytes(b"PK not really")
    with pytest.raises(ConfigError, match="cannot read init weights .*broken.npz as .npz"):
        weights.load(learner, tmp_path / "broken.npz")
    with pytest.raises(ConfigError, match="is a directory but not a metaplug run"):
        weights.load(learner, tmp_path)
    (tmp_path / "w.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"unknown format; readable here: .safetensors, .npz"):
        weights.load(learner, tmp_path / "w.onnx")
    np.savez(tmp_path / "text.npz", weight=np.array(["a", "b", "c"]))
    with pytest.raises(ConfigError, match="entry 'weight' holds <U1 values, not real numbers"):
        weights.load(learner, tmp_path / "text.npz")


# -- the configuration, runs and the CLI ------------------------------------------------------


def test_the_path_is_resolved_and_saved_with_the_run_and_resume_does_not_read_it_again(double, tmp_path, monkeypatch):
    """The run starts from the file; its checkpoint then holds the weights, so resuming
    (after the file is gone) continues bit for bit like the uninterrupted run."""
    np.savez(tmp_path / "w.npz", weight=START)
    monkeypatch.chdir(tmp_path)
    cfg = make_config(init_weights="w.npz", init_weights_strict=False)
    straight = runner.start(cfg, tmp_path / "straight", progress=False)
    assert straight.experiment.init_weights is not None and straight.experiment.init_weights.complete
    np.testing.assert_array_equal(straight.experiment.algorithm.state_dict()["model.weight"], START)
    straight.run()
    saved = tomllib.loads((tmp_path / "straight" / "config.toml").read_text())["model"]
    assert saved["init_weights"] == str(tmp_path / "w.npz") and saved["init_weights_strict"] is False

    part = runner.start(
        config.from_dict({**cfg.as_dict(), "train": {**vars(cfg.train), "iterations": 3}}),
        tmp_path / "part",
        progress=False,
    )
    part.run()
    (tmp_path / "w.npz").unlink()
    resumed = runner.resume(tmp_path / "part", iterations=6, progress=False)
    assert resumed.experiment.init_weights is None
    resumed.run()
    a, b = (checkpoints.load(tmp_path / d / "checkpoint").arrays for d in ("straight", "part"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_run_directory_gives_its_last_checkpoint_without_a_best_one(double, tmp_path):
    first = runner.start(make_config(), tmp_path / "first", progress=False)
    first.run()
    trained = checkpoints.load(tmp_path / "first" / "checkpoint").arrays["model.weight"]
    for source, which in (("first", "last checkpoint, "), ("first/checkpoint", "")):
        experiment = build(check(make_config(init_weights=str(tmp_path / source))))
        np.testing.assert_array_equal(experiment.algorithm.state_dict()["model.weight"], trained)
        assert experiment.init_weights is not None
        assert experiment.init_weights.source == f"{tmp_path / source} ({which}step 6)"


def test_a_run_directory_gives_its_best_checkpoint_when_it_validated(double, tmp_path):
    """As metaplug evaluate: the best validation's weights, said in the report; RUN/checkpoint
    names the last one explicitly."""
    raw = make_config().as_dict()
    raw["train"].update({"iterations": 12, "val_every": 2, "val_tasks": 3})
    runner.start(config.from_dict(raw), tmp_path / "run", progress=False).run()
    best, last = (checkpoints.load(tmp_path / "run" / d) for d in ("best", "checkpoint"))
    assert best.step < last.step, "the test needs a run whose best validation is not its last step"
    experiment = build(check(make_config(init_weights=str(tmp_path / "run"))))
    assert experiment.init_weights is not None
    assert experiment.init_weights.source == f"{tmp_path / 'run'} (best checkpoint, step {best.step})"
    np.testing.assert_array_equal(experiment.algorithm.state_dict()["model.weight"], best.arrays["model.weight"])
    experiment = build(check(make_config(init_weights=str(tmp_path / "run" / "checkpoint"))))
    np.testing.assert_array_equal(experiment.algorithm.state_dict()["model.weight"], last.arrays["model.weight"])


def test_old_saved_configurations_without_the_new_keys_still_load():
    raw = make_config().as_dict()
    del raw["model"]["init_weights_strict"]
    assert config.from_dict(raw).init_weights_strict is True


def test_cli_reports_what_it_loaded_and_warns_about_the_rest(tmp_path):
    np.savez(tmp_path / "w.npz", weight=START)
    np.savez(tmp_path / "partial.npz", **{"model.weight": START, "model.bias": np.zeros(1)})
    done = metaplug(
        "train",
        *SMALL,
        "--iterations",
        "2",
        "--run-dir",
        str(tmp_path / "a"),
        "--init-weights",
        str(tmp_path / "w.npz"),
        check=True,
    )
    assert f"initial weights: 1 of 1 model weights from {tmp_path / 'w.npz'}" in done.stderr
    done = metaplug(
        "train", *SMALL, "--iterations", "2", "--run-dir", str(tmp_path / "b"), "-q",
        "--init-weights", str(tmp_path / "partial.npz"), "--no-init-weights-strict", check=True,
    )  # fmt: skip
    assert (
        done.stderr.startswith("warning: initial weights: 1 of 1 model weights from")
        and "1 unexpected (bias)" in done.stderr
    )
    done = metaplug("train", *SMALL, "--run-dir", str(tmp_path / "c"), "--init-weights", str(tmp_path / "partial.npz"))
    assert_one_line_error(done, "do not fit the model: 1 unexpected (bias)", "--no-init-weights-strict")
    assert not (tmp_path / "c").exists()


def test_cli_checks_the_source_before_building_anything(tmp_path):
    done = metaplug("train", *SMALL, "--init-weights", str(tmp_path / "missing.safetensors"), "--dry-run")
    assert_one_line_error(done, "init weights file", "missing.safetensors does not exist")
    (tmp_path / "w.ckpt").write_bytes(b"")
    done = metaplug("train", *SMALL, "--init-weights", str(tmp_path / "w.ckpt"), "--dry-run")
    assert_one_line_error(done, "unknown format; readable here: .safetensors, .npz")
    np.savez(tmp_path / "w.npz", weight=START)
    done = metaplug(
        "train", *SMALL, "--init-weights", str(tmp_path / "w.npz"), "--dry-run", "--format", "json", check=True
    )
    assert f'"init_weights": "{tmp_path / "w.npz"}"' in done.stdout


def test_an_algorithm_without_the_freeze_option_says_so(tmp_path):
    """Third-party algorithms that do not extend a backend plugin's base class may lack it."""
    done = metaplug("train", *SMALL, "--run-dir", str(tmp_path / "a"), "--freeze", "features.*")
    assert_one_line_error(done, "algorithm 'linear-maml' has no option 'freeze'")

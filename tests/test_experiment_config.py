"""Configuration: defaults, TOML files, overrides, validation and the TOML writer."""

from __future__ import annotations

import math
import re
import tomllib

import pytest

from metaplug.errors import ConfigError
from metaplug.experiment import config
from metaplug.experiment.components import check
from metaplug.experiment.tomlio import dumps, parse_value


def test_defaults_are_the_sinusoid_maml_job():
    cfg = config.from_dict(config.defaults())
    assert (cfg.tasks.name, cfg.algorithm.name, cfg.optimizer.name, cfg.lr) == ("sinusoid", "maml", "adam", 0.001)
    assert cfg.backend is None and cfg.model.name is None and cfg.train.meta_batch_size == 25
    assert cfg.device is None  # the backend's own choice


def test_toml_round_trip_of_a_resolved_config():
    raw = config.defaults()
    raw["backend"], raw["device"] = "torch", "cuda:1"
    raw["tasks"].update({"amplitude": [0.1, 5.0], "label": 'quote " and \\ backslash'})
    raw["algorithm"].update({"inner_lr": 0.01, "first_order": True, "test_inner_steps": None})
    raw["evaluation"]["steps"] = 10
    cfg = config.from_dict(raw)
    again = config.from_dict(tomllib.loads(cfg.to_toml()))
    assert again == cfg.with_changes(algorithm=config.Choice("maml", {"inner_lr": 0.01, "first_order": True}))


def test_file_then_set_then_options(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('seed = 3\n[algorithm]\nname = "reptile"\ninner_steps = 5\n[train]\niterations = 10\n')
    raw = config.load_file(path)
    config.set_value(raw, *config.parse_assignment("algorithm.inner_steps=7"))
    config.set_value(raw, *config.parse_assignment("tasks.amplitude=[1, 2]"))
    config.set_value(raw, *config.parse_assignment("model.name=conv4"))
    cfg = config.from_dict(raw)
    assert cfg.seed == 3 and cfg.algorithm.options == {"inner_steps": 7} and cfg.train.iterations == 10
    assert cfg.tasks.options == {"amplitude": [1, 2]} and cfg.model.name == "conv4"


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "iterations", 0, "train.iterations must be at least 1, got 0"),
        ("train", "meta_batch_size", 2.5, "train.meta_batch_size must be an integer"),
        ("train", "val_every", True, "train.val_every must be an integer"),
        ("optimizer", "lr", 0, "optimizer.lr must be greater than 0"),
        ("optimizer", "lr", math.inf, "optimizer.lr must be finite"),
        ("evaluation", "episodes", 0, "evaluation.episodes must be at least 1"),
        ("evaluation", "stepz", 1, "unknown key evaluation.stepz. Did you mean 'steps'?"),
        ("evaluation", "ways", 0, "evaluation.ways must be at least 1"),
        ("evaluation", "queries", 1.5, "evaluation.queries must be an integer"),
        ("tasks", "name", 3, "tasks.name must be a string"),
    ],
)
def test_out_of_range_values_are_rejected(section, key, value, message):
    raw = config.defaults()
    raw[section][key] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("?", r"\?")):
        config.from_dict(raw)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("algorithm", "inner_steps", 0, "algorithm.inner_steps must be at least 1, got 0"),
        ("algorithm", "test_inner_steps", -1, "algorithm.test_inner_steps must be at least 0"),
        (
            "algorithm",
            "batching",
            "vmap",
            "algorithm.batching must be one of auto, vectorized, loop, reference, got 'vmap'",
        ),
        ("tasks", "shots", 0, "tasks.shots must be at least 1"),
        ("tasks", "amplitude", [1.0], "tasks.amplitude must have 2 entries, got [1.0]"),
        ("optimizer", "betas", [0.9, 1.0], "optimizer.betas must be in [0, 1), got 1.0"),
        ("optimizer", "anneal_steps", 3, "optimizer.anneal_steps (3) needs final_lr"),
    ],
)
def test_component_options_are_checked_against_their_declarations(section, key, value, message):
    raw = config.defaults()
    raw["backend"] = "torch"
    raw[section][key] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(config.from_dict(raw))


def test_a_batching_mode_the_backend_does_not_run_is_rejected_before_building():
    pytest.importorskip("metaplug_tensorflow")
    raw = config.defaults()
    raw["backend"], raw["algorithm"]["batching"] = "tensorflow", "reference"
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "algorithm.batching 'reference' is not available on backend 'tensorflow'; it runs auto, vectorized, loop"
        ),
    ):
        check(config.from_dict(raw))


def test_checking_fills_in_every_declared_default():
    cfg = check(config.from_dict(config.defaults()))
    assert cfg.tasks.options == {
        "shots": 10,
        "queries": 10,
        "amplitude": (0.1, 5.0),
        "phase": (0.0, math.pi),
        "x_range": (-5.0, 5.0),
    }
    assert cfg.optimizer.options["betas"] == (0.9, 0.999) and "final_lr" not in cfg.optimizer.options


def test_unknown_sections_and_keys_get_suggestions(tmp_path):
    with pytest.raises(ConfigError, match="unknown config section \\[algorithms\\]. Did you mean 'algorithm'"):
        config.merge(config.defaults(), {"algorithms": {"name": "maml"}})
    with pytest.raises(ConfigError, match="unknown config key 'sede'. Did you mean 'seed'"):
        config.from_dict({**config.defaults(), "sede": 1})
    with pytest.raises(ConfigError, match="--set expects SECTION.KEY=VALUE"):
        config.parse_assignment("=3")
    with pytest.raises(ConfigError, match="use KEY or SECTION.KEY"):
        config.set_value(config.defaults(), "a.b.c", 1)


def test_command_line_values_parse_as_toml():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value('"x y"') == "x y" and parse_value("conv4") == "conv4"


def test_writer_leaves_out_none_and_quotes_odd_keys():
    text = dumps({"a": None, "b": 1.5, "t": {"odd key": "v", "n": None, "f": float("nan")}})
    assert tomllib.loads(text)["b"] == 1.5
    table = tomllib.loads(text)["t"]
    assert table["odd key"] == "v" and "n" not in table and math.isnan(table["f"])

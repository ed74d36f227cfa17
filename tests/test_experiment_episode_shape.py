"""``[evaluation]`` ways/shots/queries: validation and test episodes shaped apart from training."""

from __future__ import annotations

import pytest

from metaplug.errors import ConfigError
from metaplug.experiment import components, config
from metaplug.plugins import discovery as plugins


def make_config(tasks: dict, evaluation: dict) -> config.ExperimentConfig:
    raw = config.defaults()
    raw["backend"] = "numpy"
    raw["algorithm"] = {"name": "linear-maml"}
    raw["tasks"].update(tasks)
    raw["evaluation"].update(evaluation)
    return config.from_dict(raw)


def test_validation_and_test_samplers_take_the_evaluation_shape(double):
    cfg = components.check(make_config({"shots": 10, "queries": 10}, {"shots": 3, "queries": 7}))
    experiment = components.build(cfg)
    train = experiment.train_sampler.sample(2)
    assert train.support_x.shape[1] == 10 and train.query_x.shape[1] == 10
    for split in ("val", "test"):
        batch = experiment.sampler(split).sample(2)
        assert batch.support_x.shape[1] == 3 and batch.query_x.shape[1] == 7


def test_without_an_evaluation_shape_every_split_has_the_training_shape(double):
    experiment = components.build(components.check(make_config({"shots": 4, "queries": 6}, {})))
    batch = experiment.sampler("test").sample(2)
    assert batch.support_x.shape[1] == 4 and batch.query_x.shape[1] == 6


def test_the_shape_round_trips_through_the_saved_configuration(double):
    import tomllib

    cfg = make_config({}, {"ways": 5, "shots": 1, "queries": 15})
    again = config.from_dict(tomllib.loads(cfg.to_toml()))
    assert again.evaluation.episode_shape() == {"ways": 5, "shots": 1, "queries": 15}


def test_an_option_the_tasks_lack_is_one_clear_error(double):
    with pytest.raises(ConfigError, match="evaluation.ways: task sampler 'sinusoid' has no option 'ways'"):
        components.check(make_config({}, {"ways": 5}))


def test_more_evaluation_ways_than_training_ways_is_an_error():
    raw = config.defaults()
    raw["tasks"] = {"name": "omniglot", "ways": 5}
    raw["algorithm"] = {"name": "protonet"}
    raw["evaluation"]["ways"] = 20
    cfg = config.from_dict(raw)
    tasks = config.Choice("omniglot", {"ways": 5, "shots": 1, "queries": 15})
    with pytest.raises(ConfigError, match=r"evaluation.ways \(20\) must be at most tasks.ways \(5\)"):
        components._check_episode_shape(cfg, tasks)


@pytest.mark.parametrize("backend_name", ["torch", "tensorflow"])
def test_protonet_scores_episodes_with_fewer_ways_than_it_was_built_for(backend_name):
    """60-way training, 5-way testing (Snell et al.): classes absent from an episode must not act
    as prototypes, so a model built for 8 ways scores a 3-way episode exactly as one built for 3."""
    import numpy as np

    from metaplug.contract.interfaces import ModelSpec
    from metaplug.testing.tasks import PrototypeSampler

    reg = plugins.registry()
    if backend_name not in reg.names("backends"):
        pytest.skip(f"backend {backend_name} is not installed")
    backend = reg.load("backends", backend_name)()
    protonet = reg.load("algorithms", "protonet", backend=backend_name)
    optimizer = reg.load("optimizers", "adam", backend=backend_name)
    batch = PrototypeSampler("test", 1, ways=3, shots=2, queries=4).sample(3)

    def scores(ways: int) -> dict:
        spec = PrototypeSampler("train", 0, ways=ways).spec
        backend.seed(0)
        model = backend.build_model(ModelSpec("mlp", spec.input_shape, spec.output_size, {}))
        algorithm = protonet(backend=backend, model=model, spec=spec, optimizer=optimizer)
        features = {k: v for k, v in algorithm.state_dict().items() if k.startswith("model.features")}
        return features, algorithm.evaluate(batch)

    wide_features, wide = scores(8)
    exact_features, exact = scores(3)
    for key, value in exact_features.items():
        np.testing.assert_array_equal(wide_features[key], value)
    assert np.isfinite(wide["loss"]).all()
    np.testing.assert_allclose(wide["loss"], exact["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(wide["accuracy"], exact["accuracy"])

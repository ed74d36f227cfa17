"""Short real training runs: the algorithms learn (sinusoid; real Omniglot 5-way 1-shot)."""

from __future__ import annotations

import functools

import pytest

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import DatasetError
from metaplug.plugins.discovery import registry
from metaplug.tasks import SinusoidSampler
from metaplug_torch import optimizers
from metaplug_torch.backend import Backend


def train(name, sampler, steps, meta_batch, lr=1e-3, model_options=None, **hyperparameters):
    backend = Backend("cpu")
    backend.seed(0)
    spec = sampler.spec
    model = backend.build_model(ModelSpec(spec.default_model, spec.input_shape, spec.output_size, model_options or {}))
    algorithm = registry().load("algorithms", name, backend="torch")(
        backend=backend, model=model, spec=spec, optimizer=functools.partial(optimizers.Adam, lr=lr), **hyperparameters
    )
    for _ in range(steps):
        algorithm.meta_train_step(sampler.sample(meta_batch))
    return algorithm


def test_sinusoid_maml_adapts_better_than_before_and_than_pretraining():
    options = {"inner_lr": 0.01, "test_inner_steps": 10}
    maml = train("maml", SinusoidSampler("train", 0), 300, 25, **options)
    pretrained = train("finetune", SinusoidSampler("train", 0), 300, 25, **options)
    test = SinusoidSampler("test", 0, shots=10).sample(100)
    adapted = maml.evaluate(test)
    baseline = pretrained.evaluate(test)["loss"].mean()
    assert adapted["loss"].mean() < 0.8 * adapted["loss_before"].mean()
    assert adapted["loss"].mean() < 0.8 * baseline


@pytest.fixture(scope="module")
def omniglot():
    from metaplug.tasks.omniglot import OmniglotSampler

    try:
        sampler = functools.partial(OmniglotSampler, seed=0, ways=5, shots=1, queries=5)
        return sampler("train"), sampler("test").sample(100)
    except DatasetError as exc:  # the data lives outside the repository
        pytest.skip(f"Omniglot not available: {exc}")


@pytest.mark.parametrize(
    "name,hyperparameters,lr,minimum",
    [
        ("protonet", {}, 1e-3, 0.5),
        ("maml", {"inner_lr": 0.4, "test_inner_steps": 3}, 3e-3, 0.4),
    ],
)
def test_omniglot_5way_1shot_beats_chance(omniglot, name, hyperparameters, lr, minimum):
    train_sampler, test = omniglot
    algorithm = train(name, train_sampler, 40, 4, lr=lr, model_options={"filters": 32}, **hyperparameters)
    accuracy = algorithm.evaluate(test)["accuracy"].mean()
    assert accuracy > minimum  # chance is 0.2

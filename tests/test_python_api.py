"""``metaplug.algorithm``: a registered algorithm built from Python, as ``metaplug train`` builds it."""

from __future__ import annotations

import numpy as np
import pytest

import metaplug
from metaplug.errors import ConfigError
from metaplug.tasks import SinusoidSampler


def test_maml_with_your_own_torch_module_learns_the_sinusoid():
    torch = pytest.importorskip("torch")
    pytest.importorskip("metaplug_torch")
    torch.set_num_threads(1)
    sampler = SinusoidSampler("train", seed=0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(), torch.nn.Linear(40, 1)
    )
    learner = metaplug.algorithm("maml", spec=sampler.spec, backend="torch", model=net, lr=0.01, inner_lr=0.01)
    for _ in range(300):
        learner.meta_train_step(sampler.sample(10))
    scores = learner.evaluate(SinusoidSampler("test", seed=1).sample(50), steps=5)
    assert np.mean(scores["loss"]) < 0.6 * np.mean(scores["loss_before"])


def test_standard_model_on_tensorflow_with_an_inner_rule_by_name():
    pytest.importorskip("metaplug_tensorflow")
    spec = SinusoidSampler("train", seed=0).spec
    learner = metaplug.algorithm("metasgd", spec=spec, backend="tensorflow", model_options={"hidden": [8]}, seed=3)
    assert type(learner.rule).__name__ == "InnerMetaSGD"
    assert learner.state_dict()["model.features.0.weight"].shape == (8, 1)


def test_bad_names_and_options_are_one_line_errors():
    pytest.importorskip("metaplug_torch")
    spec = SinusoidSampler("train", seed=0).spec
    with pytest.raises(ConfigError, match="optimizer 'inner-sgd' is an inner-loop rule"):
        metaplug.algorithm("maml", spec=spec, backend="torch", optimizer="inner-sgd")
    with pytest.raises(ConfigError, match="algorithm 'maml' has no option 'inner_lrr'. Did you mean 'inner_lr'"):
        metaplug.algorithm("maml", spec=spec, backend="torch", inner_lrr=0.1)
    with pytest.raises(metaplug.MetaplugError, match="unknown algorithm 'mamal'. Did you mean 'maml'"):
        metaplug.algorithm("mamal", spec=spec, backend="torch")


def test_the_readme_example_runs():
    pytest.importorskip("metaplug_torch")
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["predictions"].shape == (10, 1)

"""The README's "Writing a torch algorithm" example runs as printed and learns on Omniglot."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import DatasetError
from metaplug_torch import optimizers
from metaplug_torch.algorithms.base import AdaptedModel, MetaLearner
from metaplug_torch.backend import Backend
from metaplug_torch.functional import one_hot

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_algorithm() -> type[MetaLearner]:
    """The class defined by the README's example, executed with the imports it names."""
    code = re.search(r"```python\n(class CosineProtos\(MetaLearner\):.*?)```", README.read_text(), re.S)
    assert code, "the README lost its 'Writing a torch algorithm' example"
    namespace = {"F": F, "torch": torch, "one_hot": one_hot, "MetaLearner": MetaLearner, "AdaptedModel": AdaptedModel}
    exec(code.group(1), namespace)
    return namespace["CosineProtos"]


def test_readme_example_learns_omniglot_5way_1shot():
    from metaplug.tasks.omniglot import OmniglotSampler

    try:
        sampler = functools.partial(OmniglotSampler, seed=0, ways=5, shots=1, queries=5)
        train, test = sampler("train"), sampler("test").sample(100)
    except DatasetError as exc:  # the data lives outside the repository
        pytest.skip(f"Omniglot not available: {exc}")
    backend = Backend("cpu")
    backend.seed(0)
    spec = train.spec
    model = backend.build_model(ModelSpec("conv4", spec.input_shape, spec.output_size, {"filters": 32}))
    algorithm = readme_algorithm()(
        backend=backend, model=model, spec=spec, optimizer=functools.partial(optimizers.Adam, lr=1e-3)
    )
    for _ in range(40):
        algorithm.meta_train_step(train.sample(4))
    result = algorithm.evaluate(test)
    assert result["accuracy"].mean() > 0.5  # chance is 0.2
    assert np.isnan(result["loss_before"]).all()
    scores = algorithm.adapt(test.support_x[0], test.support_y[0]).predict(test.query_x[0])
    assert scores.shape == (len(test.query_x[0]), spec.output_size)
    assert np.mean(scores.argmax(1) == test.query_y[0]) == pytest.approx(result["accuracy"][0])

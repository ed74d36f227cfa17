"""The README's "Writing a TensorFlow algorithm" example runs as printed and learns."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

from metaplug.contract.interfaces import ModelSpec
from metaplug_tensorflow.algorithms.base import MetaLearner
from metaplug_tensorflow.backend import Backend
from metaplug_tensorflow.optimizers import Adam

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_algorithm() -> type[MetaLearner]:
    """The class defined by the README's example, executed with the imports it has."""
    example = r"```python\n(from metaplug_tensorflow._tf import tf\n.*?class CosineProtos\(MetaLearner\):.*?)```"
    code = re.search(example, README.read_text(), re.S)
    assert code, "the README lost its 'Writing a TensorFlow algorithm' example"
    namespace: dict = {}
    exec(code.group(1), namespace)
    return namespace["CosineProtos"]


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
def test_readme_example_learns(image_batches, batching):
    spec, batches = image_batches
    backend = Backend(dtype="float64")
    backend.seed(0)
    model = backend.build_model(ModelSpec("conv4", spec.input_shape, spec.output_size, {"filters": 4}))
    algorithm = readme_algorithm()(
        backend=backend, model=model, spec=spec, optimizer=functools.partial(Adam, lr=0.01), batching=batching
    )
    assert set(algorithm.trainables) == {f"model.{n}" for n in algorithm.model.names if n.startswith("features.")}
    before = algorithm.evaluate(batches[0])
    for _ in range(10):
        algorithm.meta_train_step(batches[0])
    after = algorithm.evaluate(batches[0])
    assert after["loss"].mean() < before["loss"].mean()
    assert np.isnan(after["loss_before"]).all()
    batch = batches[0]
    scores = algorithm.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
    assert np.mean(scores.argmax(1) == batch.query_y[0]) == pytest.approx(after["accuracy"][0])

"""Your own Keras model: every algorithm meta-learns it through stateless calls, batch norm
normalises each task on its own, weights are named by position and saved in the shared layout."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from metaplug.errors import ConfigError
from metaplug.plugins.discovery import registry
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.backend import Backend
from metaplug_tensorflow.optimizers import SGD

keras = tf.keras
ALGORITHMS = ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet", "finetune"]


class ConvNet(keras.Model):
    """A small conv net with batch norm, split into ``features`` and ``head``."""

    def __init__(self, ways: int = 3) -> None:
        super().__init__()
        self.features = keras.Sequential(
            [
                keras.layers.Conv2D(4, 3, padding="same"),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.MaxPooling2D(4),
                keras.layers.Flatten(),
            ]
        )
        self.head = keras.layers.Dense(ways)

    def call(self, x):
        return self.head(self.features(x))


def build(name, spec, model, **hyper):
    """``name`` on ``model`` as the host builds it, outer SGD at rate 0.1."""
    cls = registry().load("algorithms", name, backend="tensorflow")
    backend = Backend()
    backend.seed(0)
    return cls(backend=backend, model=model, spec=spec, optimizer=functools.partial(SGD, lr=0.1), **hyper)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_trains_a_keras_model_with_batch_norm(image_batches, name):
    spec, batches = image_batches
    model = ConvNet()
    algorithm = build(name, spec, model)
    before = {k: np.array(v) for k, v in algorithm.state_dict().items()}
    moving = [v.numpy().copy() for v in model.non_trainable_variables]
    metrics = algorithm.meta_train_step(batches[0])
    assert np.isfinite(metrics["loss"])
    after = algorithm.state_dict()
    changed = [k for k in before if k.startswith("model.features") and not np.array_equal(before[k], after[k])]
    assert changed, "the features were not meta-trained"
    scores = algorithm.evaluate(batches[1])
    assert np.all(np.isfinite(scores["loss"])) and scores["accuracy"].shape == (3,)
    for old, variable in zip(moving, model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(old, variable.numpy())  # moving averages are never updated


def test_batch_norm_normalises_each_task_with_its_own_statistics(image_batches):
    spec, batches = image_batches
    algorithm = build("maml", spec, ConvNet(), inner_lr=0.1)
    batch = batches[2]
    together = algorithm.evaluate(batch)
    for t in range(3):
        alone = algorithm.evaluate(
            type(batch)(
                *(a[t : t + 1] for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)), batch.problem
            )
        )
        np.testing.assert_allclose(alone["loss"][0], together["loss"][t], rtol=1e-5)


def test_weights_are_named_by_position_so_a_second_instance_loads_the_first_ones_state(image_batches):
    spec, batches = image_batches
    first, second = build("maml", spec, ConvNet()), build("maml", spec, ConvNet())
    assert first.model.names == second.model.names
    assert first.model.names[:4] == ("features.0.kernel", "features.0.bias", "features.1.gamma", "features.1.beta")
    first.meta_train_step(batches[0])
    second.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(first.evaluate(batches[1])["loss"], second.evaluate(batches[1])["loss"])
    kernel = first.state_dict()["model.features.0.kernel"]
    assert kernel.shape == (4, 1, 3, 3)  # the shared layout: (out, in, height, width)


def test_a_model_without_parts_runs_maml_and_protonet_but_not_anil(image_batches, sinusoid_batches):
    spec, batches = image_batches
    flat = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    algorithm = build("protonet", spec, flat)
    assert algorithm.model.names == ("0.kernel", "0.bias", "1.kernel", "1.bias")  # Flatten holds no weights
    assert np.isfinite(algorithm.meta_train_step(batches[0])["loss"])
    with pytest.raises(ConfigError, match="anil needs a Keras model with a 'features' layer"):
        build("anil", spec, keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)]))


def test_the_keras_models_dtype_decides(sinusoid_batches):
    spec, batches = sinusoid_batches
    keras.config.set_dtype_policy("float64")
    try:
        model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    finally:
        keras.config.set_dtype_policy("float32")
    algorithm = build("maml", spec, model)
    assert algorithm.model.variables[0].dtype == tf.float64, [v.dtype for v in model.trainable_variables]
    assert algorithm.backend.dtype == tf.float64
    assert np.isfinite(algorithm.meta_train_step(batches[0])["loss"])


def test_bad_keras_models_are_one_line_errors(sinusoid_batches, image_batches):
    spec, _ = sinusoid_batches
    with pytest.raises(ConfigError, match="has no trainable weights"):
        build("maml", spec, keras.Sequential([keras.layers.ReLU()]))
    with pytest.raises(ConfigError, match=r"output has shape \(2, 4\) .* the tasks need \(2, 1\)"):
        build("maml", spec, keras.Sequential([keras.layers.Dense(4)]))
    image_spec, _ = image_batches
    with pytest.raises(ConfigError, match="the Keras model fails on a batch of examples of shape"):
        build("maml", image_spec, keras.Sequential([keras.layers.Conv1D(3, 3)]))


def test_an_adapted_keras_model_exports_as_a_saved_model(sinusoid_batches, tmp_path):
    spec, batches = sinusoid_batches
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    algorithm = build("maml", spec, model, inner_lr=0.1)
    batch = batches[0]
    adapted = algorithm.adapt(batch.support_x[0], batch.support_y[0])
    served = tf.saved_model.load(str(adapted.export(tmp_path / "served")))
    np.testing.assert_allclose(
        served.serve(tf.constant(batch.query_x[0]))["outputs"].numpy(), adapted.predict(batch.query_x[0]), rtol=1e-6
    )

"""Keras weight files as ``--init-weights``: a Keras model whose layers are named after the
layout (docs/models.md) gives metaplug's model its exact weights and predictions."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from metaplug.contract.interfaces import ModelSpec, TaskSpec
from metaplug.errors import ConfigError
from metaplug.experiment import weights
from metaplug_tensorflow.algorithms.maml import MAML
from metaplug_tensorflow.backend import Backend

keras = pytest.importorskip("keras")

SINUSOID = TaskSpec("regression", (1,), 1, None, "mlp")
MLP = ModelSpec("mlp", (1,), 1, {"hidden": (8, 8)})
IMAGES = TaskSpec("classification", (1, 16, 16), 3, 10, "conv4")
CONV4 = ModelSpec("conv4", (1, 16, 16), 3, {"filters": 4})


def keras_mlp() -> keras.Model:
    """metaplug's mlp as Keras layers named after the layout."""
    layers = keras.layers
    features = keras.Sequential(
        [keras.Input((1,)), layers.Dense(8, activation="relu", name="0"), layers.Dense(8, activation="relu", name="1")],
        name="features",
    )
    inputs = keras.Input((1,))
    return keras.Model(inputs, layers.Dense(1, name="head")(features(inputs)))


def fresh(spec: TaskSpec, model: ModelSpec) -> MAML:
    backend = Backend(device="cpu")
    return MAML(backend=backend, model=backend.build_model(model), spec=spec)


def test_a_keras_mlp_named_after_the_layout_loads_with_its_predictions(tmp_path):
    model = keras_mlp()
    model.save_weights(tmp_path / "mlp.weights.h5")
    algorithm = fresh(SINUSOID, MLP)
    report = weights.load(algorithm, tmp_path / "mlp.weights.h5", backends=[Backend])
    assert report.complete and len(report.loaded) == 6
    kernel = model.get_layer("features").get_layer("0").kernel.numpy()
    np.testing.assert_array_equal(algorithm.state_dict()["model.features.0.weight"], kernel.T)
    x = np.linspace(-5, 5, 7, dtype=np.float32)[:, None]
    support = np.zeros((2, 1), np.float32)
    predicted = algorithm.adapt(support, support, steps=0).predict(x)
    np.testing.assert_allclose(predicted, model(x).numpy(), rtol=1e-6)


def test_keras_convolutions_and_batch_norm_map_to_conv4_names(tmp_path):
    layers = keras.layers
    blocks = []
    inputs = keras.Input((16, 16, 1))
    h = inputs
    for i in range(4):
        h = layers.Conv2D(4, 3, padding="same", name=f"features.{i}.conv")(h)
        h = layers.BatchNormalization(name=f"features.{i}.norm", epsilon=1e-5)(h)
        blocks.append(h)
    h = layers.Flatten()(layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, layers.Dense(3, name="head")(h))
    model.save_weights(tmp_path / "conv.weights.h5")
    found, _ = weights.read(tmp_path / "conv.weights.h5", [Backend])
    assert found["features.0.conv.weight"].shape == (4, 1, 3, 3)  # (out, in, h, w)
    kernel = model.get_layer("features.0.conv").kernel.numpy()
    np.testing.assert_array_equal(found["features.0.conv.weight"], kernel.transpose(3, 2, 0, 1))
    algorithm = fresh(IMAGES, CONV4)
    report = weights.load(algorithm, tmp_path / "conv.weights.h5", backends=[Backend])
    assert report.complete, report.summary()
    assert set(report.ignored) == {f"features.{i}.norm.{s}" for i in range(4) for s in ("running_mean", "running_var")}


def test_legacy_keras_2_files_read_by_weight_names(tmp_path):
    with h5py.File(tmp_path / "legacy.h5", "w") as handle:
        handle.attrs["layer_names"] = [b"head"]
        group = handle.create_group("head")
        group.attrs["weight_names"] = [b"head/kernel:0", b"head/bias:0"]
        group["head/kernel:0"] = np.arange(6, dtype=np.float32).reshape(3, 2)
        group["head/bias:0"] = np.ones(2, np.float32)
    found, _ = weights.read(tmp_path / "legacy.h5", [Backend])
    np.testing.assert_array_equal(found["head.weight"], np.arange(6).reshape(3, 2).T)
    np.testing.assert_array_equal(found["head.bias"], np.ones(2))


class Net(keras.Model):
    """A Keras model with parts (features with batch norm, then a head), as ``--model`` takes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = keras.Sequential(
            [keras.layers.Dense(8, activation="relu"), keras.layers.BatchNormalization(), keras.layers.Dense(8)]
        )
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.head(self.features(x, training=training))


def test_a_keras_model_starts_from_its_own_save_weights_file(tmp_path):
    """Keras matches its own file to the model; the entries come back by the model's names."""
    import metaplug

    trained = Net()
    trained(np.zeros((2, 1), np.float32))
    trained.save_weights(tmp_path / "net.weights.h5")
    algorithm = metaplug.algorithm("maml", spec=SINUSOID, backend="tensorflow", model=Net(), inner_lr=0.1)
    report = weights.load(algorithm, tmp_path / "net.weights.h5")
    assert report.complete and report.loaded[0] == "features.0.kernel" and len(report.loaded) == 8
    x = np.linspace(-2, 2, 5, dtype=np.float32)[:, None]
    adapted = algorithm.adapt(x, np.zeros((5, 1), np.float32), steps=0)
    np.testing.assert_allclose(adapted.predict(x), trained(x, training=True).numpy(), rtol=1e-5)
    other = keras.Sequential([keras.layers.Dense(3)])
    other(np.zeros((2, 1), np.float32))
    other.save_weights(tmp_path / "other.weights.h5")
    before = algorithm.state_dict()
    with pytest.raises(ConfigError, match="Keras cannot load .*other.weights.h5 into the model"):
        weights.load(algorithm, tmp_path / "other.weights.h5")
    assert all(np.array_equal(before[k], v) for k, v in algorithm.state_dict().items())

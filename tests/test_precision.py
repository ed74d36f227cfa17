"""The ``precision`` option: bf16 mixed precision learns close to float32 with float32 master
weights on both backends (first and second order), tf32 is a no-op on a CPU, bad
combinations are one line, and ``metaplug bench`` records the precision it ran."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from cli_assertions import assert_one_line_error

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.errors import ConfigError
from metaplug.plugins.discovery import registry

SPEC = TaskSpec("classification", (1, 16, 16), 3, num_classes=3, default_model="conv4")
MODEL = ModelSpec("conv4", (1, 16, 16), 3, {"filters": 8})
MLP_SPEC = TaskSpec("regression", (1,), 1, default_model="mlp")
MLP = ModelSpec("mlp", (1,), 1, {"hidden": (16, 16)})

BF16_LOSS_RTOL = 2e-2
"""bfloat16 keeps 8 significant bits (relative rounding 2**-9, about 0.2%); through the few
layers of these models the first step's loss stays within 2% of float32's."""


def batch(spec: TaskSpec, seed: int = 0, tasks: int = 2) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    if spec.problem == "regression":
        x = rng.uniform(-5, 5, size=(tasks, 10, 1)).astype(np.float32)
        return EpisodeBatch(x[:, :5], np.sin(x[:, :5]), x[:, 5:], np.sin(x[:, 5:]), problem="regression")
    labels = np.tile(np.arange(3), (tasks, 2))
    return EpisodeBatch(
        support_x=rng.normal(size=(tasks, 6, 1, 16, 16)).astype(np.float32),
        support_y=labels,
        query_x=rng.normal(size=(tasks, 6, 1, 16, 16)).astype(np.float32),
        query_y=labels,
        problem="classification",
    )


def build(backend: str, name: str, model: str = "conv4", **options: Any) -> Any:
    """``name`` on ``backend`` (CPU, float32) with seed 0's weights and Adam."""
    reg = registry()
    adam = functools.partial(reg.load("optimizers", "adam", backend=backend), lr=1e-3)
    spec, model_spec = (SPEC, MODEL) if model == "conv4" else (MLP_SPEC, MLP)
    instance = reg.load("backends", backend)(device="cpu")
    instance.seed(0)
    built = instance.build_model(model_spec)
    algorithm = reg.load("algorithms", name, backend=backend)
    return algorithm(backend=instance, model=built, spec=spec, optimizer=adam, **options)


def metaplug(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metaplug", *args], capture_output=True, text=True, timeout=300)


def weights(algorithm: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in algorithm.state_dict().items()}


CASES = [
    ("torch", "maml", "conv4", {"first_order": False}),  # second order: autocast under double backward
    ("torch", "maml", "conv4", {"first_order": False, "batching": "vectorized"}),
    ("torch", "fomaml", "conv4", {}),
    ("torch", "protonet", "conv4", {}),
    ("torch", "maml", "mlp", {"first_order": False}),
    ("tensorflow", "maml", "mlp", {"first_order": False}),
    ("tensorflow", "protonet", "conv4", {}),
]


@pytest.mark.parametrize(("backend", "name", "model", "options"), CASES)
def test_bf16_learns_close_to_float32_with_float32_master_weights(
    backend: str, name: str, model: str, options: dict[str, Any]
) -> None:
    full = build(backend, name, model, **options)
    mixed = build(backend, name, model, precision="bf16", **options)
    start = weights(mixed)
    assert all(np.array_equal(start[k], v) for k, v in weights(full).items())  # same seed, same start
    spec = full.spec
    first_full = full.meta_train_step(batch(spec))["loss"]
    first_mixed = mixed.meta_train_step(batch(spec))["loss"]
    assert first_mixed != first_full  # the forward really ran in bfloat16
    np.testing.assert_allclose(first_mixed, first_full, rtol=BF16_LOSS_RTOL)
    stepped = weights(mixed)
    tensors = [v for v in stepped.values() if v.dtype.kind == "f" and v.ndim > 0]  # not the scalar schedule
    assert all(v.dtype == np.float32 for v in tensors), "weights and optimizer moments stay float32"
    moved = [k for k in start if k.startswith("model.") and not np.array_equal(start[k], stepped[k])]
    assert moved, "the bf16 step changed no weight"
    for _ in range(15):
        last = mixed.meta_train_step(batch(spec))["loss"]
    assert last < first_mixed  # it learns (the same batch, 16 Adam steps)
    evaluated = mixed.evaluate(batch(spec, seed=1))
    assert all(np.asarray(v).dtype == np.float32 for v in evaluated.values()) and np.isfinite(evaluated["loss"]).all()
    adapted = mixed.adapt(batch(spec, seed=1).support_x[0], batch(spec, seed=1).support_y[0])
    predicted = adapted.predict(batch(spec, seed=1).query_x[0])
    assert predicted.dtype == np.float32 and np.isfinite(predicted).all()


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_tf32_changes_nothing_on_a_cpu(backend: str) -> None:
    """TensorFloat-32 only reaches GPU kernels: on a CPU a tf32 step is bit-identical to full."""
    model = "mlp" if backend == "tensorflow" else "conv4"
    full, tf32 = build(backend, "maml", model), build(backend, "maml", model, precision="tf32")
    spec = full.spec
    assert full.meta_train_step(batch(spec)) == tf32.meta_train_step(batch(spec))
    after_full, after_tf32 = weights(full), weights(tf32)
    assert all(np.array_equal(after_full[k], after_tf32[k]) for k in after_full)


def test_torch_precision_scope_sets_and_restores_the_tf32_switches() -> None:
    from metaplug_torch.precision import NEW_SWITCHES, Precision, tf32_switches

    before = tf32_switches()
    on, off = ("tf32", "ieee") if NEW_SWITCHES else (True, False)
    with Precision("tf32", device="cuda").scope():  # the switches are set whether CUDA runs or not
        assert tf32_switches() == (on, on)
        with Precision("full", device="cuda").scope():
            assert tf32_switches() == (off, off)
        with Precision("full", device="cpu").scope():  # nothing to switch for CPU kernels
            assert tf32_switches() == (on, on)
        assert tf32_switches() == (on, on)
    assert tf32_switches() == before


def test_tensorflow_precision_scope_sets_and_restores_the_tf32_switch() -> None:
    from metaplug_tensorflow._tf import tf
    from metaplug_tensorflow.precision import Precision

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    with Precision("tf32").scope():
        assert tf.config.experimental.tensor_float_32_execution_enabled()
        with Precision("bf16").scope():
            assert not tf.config.experimental.tensor_float_32_execution_enabled()
    assert tf.config.experimental.tensor_float_32_execution_enabled() == before


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_reduced_precision_refuses_a_float64_model(precision: str) -> None:
    import torch

    reg = registry()
    backend = reg.load("backends", "torch")(device="cpu")
    model = backend.build_model(MLP).double()
    with pytest.raises(ConfigError, match=f"precision '{precision}' needs a float32 model.*float64") as torch_error:
        reg.load("algorithms", "maml", backend="torch")(
            backend=backend, model=model, spec=MLP_SPEC, precision=precision
        )
    assert "\n" not in str(torch_error.value) and model.head.weight.dtype == torch.float64
    tf_backend = reg.load("backends", "tensorflow")(device="cpu", dtype="float64")
    with pytest.raises(ConfigError, match=f"precision '{precision}' needs a float32 model.*float64"):
        reg.load("algorithms", "maml", backend="tensorflow")(
            backend=tf_backend, model=tf_backend.build_model(MLP), spec=MLP_SPEC, precision=precision
        )


def test_keras_model_needs_the_mixed_bfloat16_policy_for_bf16() -> None:
    from metaplug_tensorflow._tf import tf

    keras = tf.keras

    def keras_model(dtype: str) -> Any:
        inputs = keras.Input((1,))
        hidden = keras.layers.Dense(16, activation="relu", dtype=dtype)(inputs)
        return keras.Model(inputs, keras.layers.Dense(1, dtype=dtype)(hidden), dtype=dtype)

    maml = registry().load("algorithms", "maml", backend="tensorflow")
    with pytest.raises(ConfigError, match="needs the model built under Keras's 'mixed_bfloat16' policy"):
        maml(model=keras_model("float32"), spec=MLP_SPEC, precision="bf16")
    with pytest.raises(ConfigError, match="computes in bfloat16.*set precision = 'bf16'"):
        maml(model=keras_model("mixed_bfloat16"), spec=MLP_SPEC)
    mixed = maml(model=keras_model("mixed_bfloat16"), spec=MLP_SPEC, precision="bf16")
    before = weights(mixed)
    loss = mixed.meta_train_step(batch(MLP_SPEC))["loss"]
    after = weights(mixed)
    assert np.isfinite(loss) and all(after[k].dtype == np.float32 for k in after if k.startswith("model."))
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("model."))


def test_cli_refuses_an_unknown_precision_in_one_line() -> None:
    done = metaplug("train", "--iterations", "1", "--dry-run", "--set", "algorithm.precision=fp16")
    assert_one_line_error(done, "algorithm.precision must be one of full, tf32, bf16, got 'fp16'")


def test_bench_rows_record_the_precision() -> None:
    done = metaplug(
        "bench",
        "--backend",
        "torch",
        "--workload",
        "sinusoid-maml",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--set",
        "precision=bf16",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["precision"] == "bf16" and row["options"] == {"precision": "bf16"} and row["median_ms"] > 0

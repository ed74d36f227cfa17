"""The ``precision`` option on TensorFlow: the TensorFloat-32 switch and bfloat16 forwards.

``full``
    float32 stays IEEE float32 on a GPU: TensorFloat-32 off
    (``tf.config.experimental.enable_tensor_float_32_execution(False)``; TensorFlow's own
    default has it on), so the two backends compute alike.
``tf32``
    TensorFloat-32 on for float32 matrix products and convolutions. The switch only reaches
    GPU kernels (NVIDIA Ampere and later): on a CPU nothing changes, bit for bit.
``bf16``
    mixed precision, the analogue of Keras's ``mixed_bfloat16`` policy: each forward of a
    standard model runs on bfloat16 copies of its float32 weights and inputs, and its output
    comes back as float32. The weights (the master copy), the inner-loop updates, everything
    the algorithm computes from the model's outputs (prototypes, losses, softmax) and the
    optimizer's state stay float32; gradients reach the float32 weights through the casts. A
    Keras model is not cast: it must be built under Keras's own policy
    (``keras.mixed_precision.set_dtype_policy("mixed_bfloat16")``: float32 weights, bfloat16
    computation), and only its output is cast to float32.

The switch is process-wide, so :meth:`Precision.scope` sets it around each compiled step,
evaluation, adaptation and prediction and restores it after (TensorFlow reads it when a
kernel runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from metaplug.contract.hyperparameters import PRECISION, check_precision
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf

KERAS_POLICY = "mixed_bfloat16"
"""The Keras dtype policy a Keras model needs for ``bf16``."""


class Precision:
    """How a model with weights of ``dtype`` computes under the option ``name`` (one of
    :data:`~metaplug.contract.hyperparameters.PRECISION`)."""

    def __init__(self, name: str = "full", dtype: tf.DType = tf.float32) -> None:
        if name not in PRECISION:
            raise ConfigError(f"precision must be one of {', '.join(PRECISION)}, got {name!r}")
        check_precision(name, tf.as_dtype(dtype).name)
        self.name = name
        self.compute = tf.bfloat16 if name == "bf16" else None
        """The dtype the model's forward computes in (``None``: its own)."""

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """TensorFloat-32 on (``tf32``) or off (``full``, ``bf16``) for the block, restored after."""
        before = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(self.name == "tf32")
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(before)

    def apply(self, model: Any, example_shape: Sequence[int]) -> None:
        """With ``bf16``, make ``model`` (a :class:`~metaplug_tensorflow.models.FunctionalModel`)
        compute in bfloat16: its ``embed`` and ``head`` (which every forward goes through,
        whatever the model overrides) become instance attributes that cast weights and inputs
        to bfloat16 and the output back to float32. A Keras model (examples of
        ``example_shape``, TensorFlow's layout) must already compute in bfloat16 under Keras's
        policy (one line otherwise); only its outputs are cast."""
        keras_dtype = _keras_output_dtype(model, example_shape)
        if keras_dtype is not None:
            _check_keras(self.name, keras_dtype)
        if self.compute is None:
            return
        cast_inputs = keras_dtype is None
        embed, head = model.embed, model.head

        def mixed_embed(
            params: Sequence[tf.Tensor], x: tf.Tensor, per_task: bool = False, vectorized: bool = True
        ) -> tf.Tensor:
            if cast_inputs:
                params, x = self.cast(params), tf.cast(x, self.compute)
            return self.output(embed(params, x, per_task, vectorized))

        def mixed_head(params: Sequence[tf.Tensor], h: tf.Tensor, per_task: bool = False) -> tf.Tensor:
            if cast_inputs:
                params, h = self.cast(params), tf.cast(h, self.compute)
            return self.output(head(params, h, per_task))

        model.embed, model.head = mixed_embed, mixed_head

    def cast(self, params: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """bfloat16 copies of ``params`` (the gradient flows back to the float32 originals)."""
        return [tf.cast(p, self.compute) for p in params]

    def output(self, t: tf.Tensor) -> tf.Tensor:
        """A model's output in float32 again."""
        return tf.cast(t, tf.float32) if t.dtype != tf.float32 else t


def _keras_output_dtype(model: Any, example_shape: Sequence[int]) -> str | None:
    """The dtype a wrapped Keras model computes its output in (``None`` for a standard
    model): what its layers' policies make of two zero examples (a functional model's own
    policy need not be its layers')."""
    keras_model = getattr(model, "keras_model", None)
    if keras_model is None:
        return None
    outputs = keras_model(tf.zeros([2, *example_shape], model.dtype), training=False)
    return str(tf.as_dtype(tf.nest.flatten(outputs)[0].dtype).name)


def _check_keras(precision: str, compute_dtype: str) -> None:
    """A Keras model computes in its layers' policy's dtype: bfloat16 for ``bf16`` only."""
    if precision == "bf16" and compute_dtype != "bfloat16":
        raise ConfigError(
            f"precision 'bf16' with a Keras model needs the model built under Keras's "
            f"{KERAS_POLICY!r} policy (keras.mixed_precision.set_dtype_policy({KERAS_POLICY!r}) before building "
            f"it); this one computes in {compute_dtype}"
        )
    if precision != "bf16" and compute_dtype == "bfloat16":
        raise ConfigError(
            f"the Keras model computes in bfloat16 (dtype policy {KERAS_POLICY!r}): set precision = 'bf16'"
        )


__all__ = ["KERAS_POLICY", "Precision"]

"""Export an adapted model as a TensorFlow SavedModel that needs only TensorFlow to serve.

The SavedModel holds the adapted weights as variables and one signature,
``serving_default``, taking ``x`` float32 ``(N, *input_shape)`` (channels first,
as metaplug's episodes) and returning ``{"outputs": (N, out)}``. Load it with::

    import tensorflow as tf
    served = tf.saved_model.load(path)
    outputs = served.serve(x)                                    # or
    outputs = served.signatures["serving_default"](x=x)["outputs"]

It is written by ``metaplug export RUN --format savedmodel`` and
:meth:`metaplug_tensorflow.algorithms.base.AdaptedModel.export`. ONNX is not written from
TensorFlow (tf2onnx does not support TensorFlow 2.16+ with numpy 2); export from a torch
run, or load this run's weights into the torch plugin (one weight layout) and export there.

Batch norm (conv4) normalises with the statistics of the ``x`` it is given, as
every metaplug model does, so predict on a batch of examples, not one at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf

FORMATS = ("savedmodel",)

if TYPE_CHECKING:
    from metaplug_tensorflow.algorithms.base import AdaptedModel


def save_adapted(adapted: AdaptedModel, path: str | Path) -> Path:
    """Write ``adapted`` to the folder ``path`` (created; must not hold a file) and return it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot export to {path}: it is a file")
    module = tf.Module()
    module.state = [tf.Variable(w, trainable=False) for w in adapted.state]
    spec = tf.TensorSpec([None, *adapted.input_shape], tf.float32, name="x")

    @tf.function(input_signature=[spec])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = adapted.predict_fn(module.state, adapted.native_inputs(x))
        return {"outputs": tf.cast(outputs[0], tf.float32)}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path

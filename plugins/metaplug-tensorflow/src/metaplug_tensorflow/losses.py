"""Per-task losses and accuracy of a group of tasks: outputs ``(T, N, out)``, results ``(T,)``."""

from __future__ import annotations

from metaplug_tensorflow._tf import tf


def task_loss(problem: str, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """``(T,)`` losses: mean softmax cross-entropy over examples, or mean squared error over
    all targets.

    The cross-entropy is written from ``log_softmax``: TensorFlow's fused
    ``sparse_softmax_cross_entropy_with_logits`` refuses second derivatives.
    """
    if problem == "classification":
        log_p = tf.nn.log_softmax(outputs, axis=-1)
        picked = tf.gather(log_p, targets, axis=2, batch_dims=2)
        return -tf.reduce_mean(picked, axis=1)
    return tf.reduce_mean(tf.square(outputs - targets), axis=[1, 2])


def accuracy(outputs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """``(T,)`` fraction of examples whose highest score is the label."""
    hits = tf.equal(tf.argmax(outputs, axis=-1, output_type=labels.dtype), labels)
    return tf.reduce_mean(tf.cast(hits, outputs.dtype), axis=1)

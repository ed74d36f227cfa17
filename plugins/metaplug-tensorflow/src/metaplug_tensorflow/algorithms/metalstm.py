"""The LSTM meta-learner (Ravi and Larochelle 2017): a learned optimizer whose cell state
is the learner's parameters."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from metaplug.contract.hyperparameters import MetaLSTMOptions
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import Weights, tile
from metaplug_tensorflow.algorithms.gradient import GradientMetaLearner
from metaplug_tensorflow.losses import task_loss

PREFIX = "metalstm."
PREPROCESS_P = 10.0
"""Andrychowicz et al.'s preprocessing constant ``p`` (the authors' code: ``P = 10``)."""

State = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]
"""The first LSTM's ``(h, c)`` and the previous forget and input gate pre-activations, per
task and learner parameter entry."""


def preprocess(x: tf.Tensor, p: float = PREPROCESS_P) -> tf.Tensor:
    """``(..., 2)``: ``(log|x| / p, sign x)`` where ``|x| >= e^-p``, else ``(-1, e^p x)``
    (Andrychowicz et al. 2016, appendix A; the authors' ``preprocess``)."""
    floor = tf.constant(math.exp(-p), x.dtype)
    big = tf.abs(x) > floor
    first = tf.where(big, tf.math.log(tf.maximum(tf.abs(x), floor)) / p, -tf.ones_like(x))
    second = tf.where(big, tf.sign(x), x * math.exp(p))
    return tf.stack([first, second], axis=-1)


def meta_lstm_step(
    meta: Mapping[str, tf.Tensor], theta: tf.Tensor, grad: tf.Tensor, loss: tf.Tensor, state: State | None
) -> tuple[tf.Tensor, State]:
    """One update of the flat per-task learner parameters ``theta`` ``(T, P)`` from their
    gradients and the per-task losses ``(T,)`` (constants); see the torch plugin's
    :func:`metaplug_torch.algorithms.metalstm.meta_lstm_step` for the equations."""
    weight = meta[PREFIX + "lstm.weight"]  # (4 + H, 4H), TensorFlow's layout
    hidden_size = weight.shape[1] // 4
    if state is None:
        zeros = tf.zeros([*theta.shape, hidden_size], theta.dtype)
        state = (zeros, zeros, tf.zeros_like(theta), tf.zeros_like(theta))
    h, c, f_prev, i_prev = state
    lossp = tf.broadcast_to(preprocess(loss)[:, None, :], [*theta.shape, 2])
    inputs = tf.concat([lossp, preprocess(grad), h], axis=-1)
    gates = tf.einsum("tpi,io->tpo", inputs, weight) + meta[PREFIX + "lstm.bias"]
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    column = theta[:, :, None]
    forget_in = tf.concat([h, column, f_prev[:, :, None]], axis=-1)
    rate_in = tf.concat([h, column, i_prev[:, :, None]], axis=-1)
    forget = tf.einsum("tpi,i->tp", forget_in, meta[PREFIX + "forget.weight"]) + meta[PREFIX + "forget.bias"]
    rate = tf.einsum("tpi,i->tp", rate_in, meta[PREFIX + "input.weight"]) + meta[PREFIX + "input.bias"]
    return tf.sigmoid(forget) * theta - tf.sigmoid(rate) * grad, (h, c, forget, rate)


class MetaLSTM(GradientMetaLearner):
    """The LSTM meta-learner (Ravi and Larochelle 2017): the model is the learner, its
    weights the meta-LSTM's initial cell state; each of ``inner_steps`` updates feeds the
    preprocessed support loss and gradient (constants) of every weight entry to a
    coordinate-wise LSTM of ``hidden_size`` units and the meta-LSTM cell, whose forget and
    input gates act as learned weight decay and learning rate. Initialised and saved
    (``metalstm.*``) as the torch plugin's; batch norm as there (see its docstring).
    """

    name = "metalstm"
    Options = MetaLSTMOptions  # type: ignore[assignment]
    options: MetaLSTMOptions  # type: ignore[assignment]

    def extra_parameters(self) -> dict[str, np.ndarray]:
        """As the authors' code: LSTM weights U(-0.01, 0.01), forget bias U(4, 5), input bias
        U(-5, -4) (drawn from the backend's generator, TensorFlow's layout)."""
        rng, hidden = self.backend.rng, self.options.hidden_size
        return {
            PREFIX + "lstm.weight": rng.uniform(-0.01, 0.01, (4 + hidden, 4 * hidden)),
            PREFIX + "lstm.bias": rng.uniform(-0.01, 0.01, (4 * hidden,)),
            PREFIX + "forget.weight": rng.uniform(-0.01, 0.01, (hidden + 2,)),
            PREFIX + "forget.bias": rng.uniform(4.0, 5.0, (1,)),
            PREFIX + "input.weight": rng.uniform(-0.01, 0.01, (hidden + 2,)),
            PREFIX + "input.bias": rng.uniform(-5.0, -4.0, (1,)),
        }

    def inner_learnables(self) -> dict[str, tf.Variable]:
        """The meta-learner's variables (``self.extra``)."""
        return dict(self.extra)

    def adapt_tasks(self, h_support: tf.Tensor, sy: tf.Tensor, steps: int, second_order: bool = False) -> Weights:
        """Per-task learner weights after ``steps`` meta-LSTM updates on the support set
        (differentiable back to the meta-parameters through the updates, never through the
        gradients: ``second_order`` is ignored)."""
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        names = self.adapted_names()
        tasks = h_support.shape[0]
        start = tile([weights[n] for n in names], tasks)
        shapes = [w.shape for w in start]
        sizes = [math.prod(s[1:]) for s in shapes]

        def unflatten(flat: tf.Tensor) -> Weights:
            return [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes, axis=1), shapes, strict=True)]

        theta = tf.concat([tf.reshape(w, [tasks, -1]) for w in start], axis=1)
        frozen = self.freezing.adaptation
        keep = tf.constant(np.concatenate([np.full(size, n in frozen) for n, size in zip(names, sizes, strict=True)]))
        meta = self.inner_learnables()
        state: State | None = None
        for _ in range(steps):
            point = unflatten(tf.stop_gradient(theta))
            with tf.GradientTape() as tape:
                tape.watch(point)
                losses = task_loss(self.problem, self.task_output(point, h_support), sy)
                total = tf.reduce_sum(losses)
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, point)]
            grad = tf.concat([tf.reshape(g, [tasks, -1]) for g in grads], axis=1)
            stepped, state = meta_lstm_step(meta, theta, tf.stop_gradient(grad), tf.stop_gradient(losses), state)
            theta = tf.where(keep[None, :], theta, stepped) if frozen else stepped  # frozen weights as they came
        return unflatten(theta)

    def meta_gradients(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        with tf.GradientTape() as tape:
            fast = self.adapt_tasks(self.task_inputs(sx), sy, self.options.inner_steps)
            metrics = self.loss_and_accuracy(self.task_output(fast, self.task_inputs(qx)), qy)
            loss = tf.reduce_sum(metrics["loss"])
        return self.gradients(loss, tape), metrics

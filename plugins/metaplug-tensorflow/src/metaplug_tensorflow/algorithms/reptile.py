"""Reptile (Nichol et al. 2018): move the initialisation towards the adapted weights.

Besides plain full-batch gradient descent, the inner loop can run the published protocol
(supervised-reptile, Appendix A of the paper): Adam with ``beta1 = 0`` whose state carries
over from task to task, on mini-batches of the support set, with non-transductive
evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from metaplug.contract.hyperparameters import ReptileOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.contract.minibatches import EVAL, TRAIN, MiniBatchDraws
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import Weights, tile
from metaplug_tensorflow.algorithms.gradient import GradientMetaLearner
from metaplug_tensorflow.models import task_forwards

AdamState = tuple[list[tf.Tensor], list[tf.Tensor], tf.Tensor]
"""The inner Adam's first and second moments (per weight, with a task axis) and step count."""


class Reptile(GradientMetaLearner):
    """Reptile: the outer "gradient" is ``theta - mean_i(phi_i)``, ``phi_i`` the weights after
    ``inner_steps`` inner steps on task ``i``'s support set; with SGD at rate ``eps`` this is
    ``theta <- theta + eps (mean phi - theta)``. The reported loss is the query loss at ``phi_i``.

    ``inner_optimizer`` is ``"sgd"`` (``p - inner_lr * grad``) or ``"adam"``: TF1's
    ``AdamOptimizer`` at ``inner_lr`` (:meth:`adam_step`, ``adam_beta1``, ``adam_beta2``,
    ``adam_epsilon``) whose state, as in the authors' code, is never reset: meta-training
    adapts the tasks of a batch one after another (whatever ``batching`` says), each
    continuing the state the previous task left, and the state is saved; ``evaluate`` and
    ``adapt`` start every task from it and leave it unchanged.

    ``inner_batch_size`` (``test_inner_batch_size`` in ``evaluate``/``adapt``, default the
    same) makes each inner step use that many support examples, drawn by
    :class:`metaplug.contract.minibatches.MiniBatchDraws` (``None``: the whole support set)
    from the run's seed (``backend.seed_value``) as supervised-reptile's ``_mini_batches``;
    the seed and counters are saved.
    """

    name = "reptile"
    Options = ReptileOptions
    options: ReptileOptions

    def setup(self) -> None:
        """The inner Adam's state (``inner_adam.*``) and the mini-batch draws (``inner_batches.*``)."""
        if self.options.inner_optimizer == "adam":
            with self.backend.scope():
                self.adam_m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.model.variables]
                self.adam_v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.model.variables]
                self.adam_t = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.register_state(
                {
                    **{f"inner_adam.m.{n}": m for n, m in zip(self.model.names, self.adam_m, strict=True)},
                    **{f"inner_adam.v.{n}": v for n, v in zip(self.model.names, self.adam_v, strict=True)},
                    "inner_adam.t": self.adam_t,
                }
            )
        self.batches = MiniBatchDraws(
            self.backend.seed_value, self.options.inner_batch_size, self.options.evaluation_batch_size
        )

    # -- mini-batches ------------------------------------------------------------------

    def draws(self, stream: int, tasks: int, steps: int, size: int) -> tuple[tf.Tensor, ...]:
        """``((tasks, steps, batch) indices,)`` of the mini-batches of the next ``tasks`` tasks of
        ``stream`` with ``size`` support examples (``()`` without mini-batches); counts them."""
        rows = self.batches.draw(stream, tasks, steps, size)
        return () if rows is None else (self.backend.tensor(rows),)

    def extra_train_inputs(self, batch: EpisodeBatch) -> tuple[tf.Tensor, ...]:
        tasks, size = batch.support_x.shape[:2]
        return self.draws(TRAIN, tasks, self.options.inner_steps, size)

    def adaptation_inputs(self, num_tasks: int, support_size: int, steps: int) -> tuple[tf.Tensor, ...]:
        return self.draws(EVAL, num_tasks, steps, support_size)

    # -- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """The base entries (with Adam: ``inner_adam.{m,v}.<weight>`` and ``inner_adam.t``)
        and, with mini-batches, ``inner_batches.seed``, ``inner_batches.train`` and
        ``inner_batches.eval`` (the draw counters)."""
        return {**super().state_dict(), **self.batches.state()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.batches.load_state(state)

    # -- the inner loop ------------------------------------------------------------------

    def adam_step(
        self, params: Sequence[tf.Tensor], grads: Sequence[tf.Tensor], state: AdamState
    ) -> tuple[list[tf.Tensor], AdamState]:
        """TF1's ``AdamOptimizer``: ``t += 1``, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2)
        g^2``, ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``."""
        m, v, t = state
        b1, b2, eps = self.options.adam_beta1, self.options.adam_beta2, self.options.adam_epsilon
        t = t + 1
        power = tf.cast(t, tf.float64)
        rate = (
            self.options.inner_lr
            * tf.sqrt(1 - tf.pow(tf.constant(b2, tf.float64), power))
            / (1 - tf.pow(tf.constant(b1, tf.float64), power))
        )
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads, strict=True)]
        v = [b2 * vi + (1 - b2) * tf.square(g) for vi, g in zip(v, grads, strict=True)]
        params = [p - tf.cast(rate, p.dtype) * mi / (tf.sqrt(vi) + eps) for p, mi, vi in zip(params, m, v, strict=True)]
        return params, (m, v, t)

    def adapt_with(
        self, fast: Weights, x: tf.Tensor, y: tf.Tensor, steps: int, batches: tf.Tensor | None, adam: AdamState | None
    ) -> tuple[Weights, AdamState | None]:
        """``steps`` first-order inner steps of per-task weights ``fast`` on the support set
        ``(x, y)``: on all of it, or on the mini-batches ``batches`` ``(T, steps, B)``; with the
        inner rule (SGD), or with Adam from state ``adam`` (returned updated)."""
        sgd = self.rule_update(self.adapted_names(), self.inner_learnables(), self.options.inner_lr)
        if batches is None and adam is None:
            return self.inner_loop(self.task_output, fast, x, y, steps, sgd), None
        states: list[AdamState] = [] if adam is None else [adam]

        frozen = [n in self.freezing.adaptation for n in self.adapted_names()]

        def adam_update(params: Weights, grads: Weights) -> Weights:
            stepped, states[0] = self.adam_step(params, grads, states[0])
            return [p if keep else q for p, q, keep in zip(params, stepped, frozen, strict=True)]

        update = sgd if adam is None else adam_update
        for k in range(steps):
            xb, yb = x, y
            if batches is not None:
                xb = tf.gather(x, batches[:, k], axis=1, batch_dims=1)
                yb = tf.gather(y, batches[:, k], axis=1, batch_dims=1)
            fast = self.inner_loop(self.task_output, fast, xb, yb, 1, update)
        return fast, states[0] if states else None

    def _adam_state(self, num_tasks: int) -> AdamState | None:
        if self.options.inner_optimizer != "adam":
            return None
        return (tile(self.adam_m, num_tasks), tile(self.adam_v, num_tasks), tf.identity(self.adam_t))

    # -- meta-training -------------------------------------------------------------------

    def meta_gradients(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, *batches: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        theta = self.model.variables
        fast, _ = self.adapt_with(
            tile(theta, sx.shape[0]), sx, sy, self.options.inner_steps, batches[0] if batches else None, None
        )
        sums = [tf.reduce_sum(p[None] - phi, axis=0) for p, phi in zip(theta, fast, strict=True)]
        return sums, self.loss_and_accuracy(self.task_output(fast, qx), qy)

    def _train_impl(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        """With Adam: the tasks one after another in a ``tf.while_loop``, each continuing
        the Adam state the previous one left; the state is kept for the next step."""
        if self.options.inner_optimizer != "adam":
            return super()._train_impl(*tensors)
        num_tasks = tensors[0].shape[0]
        theta = [tf.convert_to_tensor(v) for v in self.model.variables]
        adam = (list(tile(self.adam_m, 1)), list(tile(self.adam_v, 1)), tf.convert_to_tensor(self.adam_t))
        arrays = {k: tf.TensorArray(self.backend.dtype, size=num_tasks) for k in self.metric_keys}

        def body(i: tf.Tensor, totals: list[tf.Tensor], adam: AdamState, arrays: dict) -> tuple:
            sx, sy, qx, qy, *batches = [t[i][None] for t in tensors]
            with task_forwards(i):
                fast, carried = self.adapt_with(
                    tile(theta, 1), sx, sy, self.options.inner_steps, batches[0] if batches else None, adam
                )
                metrics = self.loss_and_accuracy(self.task_output(fast, qx), qy)
            totals = [s + (p - phi[0]) for s, p, phi in zip(totals, theta, fast, strict=True)]
            return i + 1, totals, carried, {k: arrays[k].write(i, metrics[k][0]) for k in self.metric_keys}

        zeros = [tf.zeros_like(p) for p in theta]
        _, sums, (m, v, t), arrays = tf.while_loop(
            lambda i, *_: i < num_tasks, body, (tf.constant(0), zeros, adam, arrays), parallel_iterations=1
        )
        for variable, value in zip([*self.adam_m, *self.adam_v], [*m, *v], strict=True):
            variable.assign(value[0])
        self.adam_t.assign(t)
        self.optimizer.apply(self.outer_gradients(sums, num_tasks))
        return {k: tf.reduce_mean(a.stack()) for k, a in arrays.items()}

    # -- evaluation and adaptation --------------------------------------------------------

    def adapt_support(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *batches: tf.Tensor) -> Weights:
        """From the inner Adam state left by training (unchanged), on the evaluation mini-batches."""
        num_tasks = sx.shape[0]
        fast, _ = self.adapt_with(
            tile(self.model.variables, num_tasks),
            sx,
            sy,
            steps,
            batches[0] if batches else None,
            self._adam_state(num_tasks),
        )
        return fast

"""MAML++ (Antoniou et al. 2019, "How to train your MAML"): MAML with the paper's tricks."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from metaplug.contract import mamlpp
from metaplug.contract.hyperparameters import MAMLPlusPlusOptions
from metaplug.contract.interfaces import EpisodeBatch, apply_rule, initial_state
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import Update, Weights, tile
from metaplug_tensorflow.algorithms.maml import MAML

STEPS_KEY = "mamlpp.steps"
"""The meta-steps taken, in ``state_dict`` (the annealing schedules depend on it)."""


class MAMLPlusPlus(MAML):
    """MAML++: MAML whose tricks are switches of :class:`MAMLPlusPlusOptions` (all on by default).

    The same computation as metaplug-torch's ``mamlpp`` (see its docstring and
    docs/algorithms.md): multi-step loss, learned per-layer per-step inner rates
    (``lslr.<name>``), per-step batch-norm weights and biases (``bn.<name>``, stored here as
    ``(channels, inner_steps)``, TensorFlow's layout of the shared ``(inner_steps, channels)``),
    derivative-order annealing and cosine annealing of the outer rate. A meta-step is compiled
    once per derivative order and set of multi-step losses (at most four traces); the
    losses' weights are inputs, not constants.
    """

    name = "mamlpp"
    Options = MAMLPlusPlusOptions
    options: MAMLPlusPlusOptions

    def setup(self) -> None:
        with self.backend.scope():
            self.meta_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="mamlpp_steps")
        self.register_state({STEPS_KEY: self.meta_steps})
        self._variant: tuple[bool, tuple[bool, ...]] = (True, ())
        self._train_variants: dict[tuple[bool, tuple[bool, ...]], Any] = {}
        self._loss_weights: list[float] = []
        if self.options.cosine_annealing:
            mamlpp.anneal_outer_rate(self.optimizer, self.options)

    # -- which weights adapt, and the per-step ones ----------------------------------------

    def norm_names(self) -> list[str]:
        """The batch-norm weights kept per step (none without ``per_step_batch_norm``)."""
        return mamlpp.batch_norm_names(self.model.names) if self.options.per_step_batch_norm else []

    def adapted_names(self) -> list[str]:
        norms = set(self.norm_names())
        return [n for n in super().adapted_names() if n not in norms]

    def trained_names(self) -> list[str]:
        """The model's weights but the batch norm replaced by per-step copies."""
        norms = set(self.norm_names())
        return [n for n in self.model.names if n not in norms]

    def extra_parameters(self) -> dict[str, Any]:
        extra = super().extra_parameters()
        steps = self.options.inner_steps
        dtype = self.backend.dtype
        if self.options.learned_inner_lr:
            for n in self.adapted_names():
                extra[f"lslr.{n}"] = tf.fill([steps], tf.constant(self.options.inner_lr, dtype))
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        for n in self.norm_names():
            extra[f"bn.{n}"] = tf.repeat(tf.convert_to_tensor(weights[n])[:, None], steps, axis=1)
        return extra

    def inner_learnables(self) -> dict[str, tf.Variable]:
        return {k[len("inner.") :]: v for k, v in self.extra.items() if k.startswith("inner.")}

    def full_weights(self, fast: Sequence[tf.Tensor], step: int, num_tasks: int) -> Weights:
        """Every model weight with a task axis: the adapted ``fast`` (order of
        :meth:`adapted_names`) and the batch norm of inner step ``step``."""
        index = mamlpp.step_index(step, self.options.inner_steps)
        norms = set(self.norm_names())
        adapted = iter(fast)
        weights = []
        for n in self.model.names:
            if n in norms:
                value = self.extra[f"bn.{n}"][:, index]
                weights.append(tf.broadcast_to(value, [num_tasks, *value.shape]))
            else:
                weights.append(next(adapted))
        return weights

    # -- the inner loop ----------------------------------------------------------------------

    def step_update(self, names: Sequence[str]) -> Update:
        """One inner step per call (the ``k``-th call is step ``k``): the rule at ``inner_lr``,
        or with LSLR each weight at its own learned rate of that step; a stateful rule's
        state starts fresh at the first call."""
        learnables = self.inner_learnables()
        state: dict[str, Any] | None = None
        step = 0

        def update(weights: Weights, grads: Weights) -> Weights:
            nonlocal state, step
            named = dict(zip(names, weights, strict=True))
            named_grads = dict(zip(names, grads, strict=True))
            if state is None:
                state = initial_state(self.rule, named)
            index = mamlpp.step_index(step, self.options.inner_steps)
            step += 1
            if not self.options.learned_inner_lr:
                stepped, state = apply_rule(self.rule, named, named_grads, learnables, self.options.inner_lr, state)
                return [stepped[n] for n in names]
            result, after = [], {}
            for n in names:
                one = {n: learnables[n]} if n in learnables else {}
                stepped, part = apply_rule(
                    self.rule,
                    {n: named[n]},
                    {n: named_grads[n]},
                    one,
                    self.extra[f"lslr.{n}"][index],
                    {n: state[n]} if state else {},
                )
                result.append(stepped[n])
                after.update(part)
            state = after
            return result

        return update

    def trajectory(self, h_support: tf.Tensor, sy: tf.Tensor, steps: int, second_order: bool) -> list[Weights]:
        """The adapted weights (order of :meth:`adapted_names`, task axis) after each inner step."""
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        names = self.adapted_names()
        num_tasks = h_support.shape[0]
        fast = tile([weights[n] for n in names], num_tasks)
        update = self.step_update(names)
        found = []
        for step in range(steps):

            def forward(w: Weights, x: tf.Tensor, step: int = step) -> tf.Tensor:
                return self.forward_per_task(self.full_weights(w, step, num_tasks), x)

            fast = self.inner_loop(forward, fast, h_support, sy, 1, update, second_order)
            found.append(fast)
        return found

    def adapt_tasks(self, h_support: tf.Tensor, sy: tf.Tensor, steps: int, second_order: bool = False) -> Weights:
        """Every model weight (task axis) after ``steps`` inner steps, with the last step's batch norm."""
        found = self.trajectory(h_support, sy, steps, second_order)
        if found:
            fast = found[-1]
        else:
            weights = dict(zip(self.model.names, self.model.variables, strict=True))
            fast = tile([weights[n] for n in self.adapted_names()], h_support.shape[0])
        return self.full_weights(fast, max(steps - 1, 0), h_support.shape[0])

    # -- meta-training --------------------------------------------------------------------------

    def meta_gradients(  # type: ignore[override]
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, loss_weights: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        second_order, active = self._variant
        steps = self.options.inner_steps
        num_tasks = sx.shape[0]
        with tf.GradientTape() as tape:
            found = self.trajectory(sx, sy, steps, second_order)
            objective: Any = 0.0
            for step in range(steps):
                if not active[step] and step != steps - 1:
                    continue
                output = self.forward_per_task(self.full_weights(found[step], step, num_tasks), qx)
                metrics = self.loss_and_accuracy(output, qy)
                objective = objective + loss_weights[:, step] * metrics["loss"]
            total = tf.reduce_sum(objective)
        return self.gradients(total, tape), metrics

    def extra_train_inputs(self, batch: EpisodeBatch) -> tuple[tf.Tensor, ...]:
        """The multi-step loss weights of this meta-step, one row per task."""
        rows = np.tile(np.asarray(self._loss_weights, dtype=np.float64), (batch.num_tasks, 1))
        return (tf.constant(rows, self.backend.dtype),)

    def _train_variant(self, variant: tuple[bool, tuple[bool, ...]], *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        self._variant = variant
        return self._train_impl(*tensors)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update; the metrics are the query loss (and accuracy) after the last inner step."""
        taken = int(self.meta_steps.numpy())
        self._loss_weights = mamlpp.multi_step_loss_weights(self.options, taken)
        variant = (mamlpp.second_order_now(self.options, taken), tuple(w > 0 for w in self._loss_weights))
        if variant not in self._train_variants:
            self._train_variants[variant] = tf.function(functools.partial(self._train_variant, variant))
        self._train_fn = self._train_variants[variant]
        metrics = super().meta_train_step(batch)
        self.meta_steps.assign_add(1)
        return metrics

    # -- evaluation and adapted models ------------------------------------------------------------

    def evaluate_tasks(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, steps: int, *extra: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        start = tile([weights[n] for n in self.adapted_names()], sx.shape[0])
        before = self.query_output(self.full_weights(start, 0, sx.shape[0]), sx, qx)
        after = self.query_output(self.adapt_support(sx, sy, steps), sx, qx)
        return {**self.loss_and_accuracy(after, qy), "loss_before": self.loss_and_accuracy(before, qy)["loss"]}

    def adapted_state(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        weights = [w[0] for w in self.adapt_support(sx, sy, steps)]
        return weights if self.options.transductive else [*weights, sx]

"""Shared machinery of the algorithms that adapt by gradient steps (MAML family, Reptile)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from metaplug.contract.hyperparameters import InnerLoopOptions, check_recompute
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.algorithms.base import MetaLearner, Weights, recomputed_steps, tile
from metaplug_tensorflow.losses import task_loss


def per_query(forward: Callable[[tf.Tensor], tf.Tensor], sx: tf.Tensor, qx: tf.Tensor) -> tf.Tensor:
    """Non-transductive outputs ``(T, Q, out)``: ``forward`` (a model on inputs ``(R, N, ...)``,
    each row its own batch) on the support examples ``sx`` ``(T, S, ...)`` followed by one
    query example of ``qx`` ``(T, Q, ...)``, keeping the last output of each such batch."""
    tasks, size = sx.shape[0], sx.shape[1]
    queries = qx.shape[1] if qx.shape[1] is not None else tf.shape(qx)[1]  # dynamic in a served model
    x = tf.concat([tf.repeat(sx[:, None], queries, axis=1), qx[:, :, None]], axis=2)  # (T, Q, S + 1, ...)
    outputs = forward(tf.reshape(x, [-1, size + 1, *sx.shape[2:]]))
    return tf.reshape(outputs[:, -1], [tasks, -1, outputs.shape[-1]])


class GradientMetaLearner(MetaLearner):
    """Adapts the weights named by :meth:`adapted_names` with ``inner_steps`` steps of the
    inner rule (``self.rule``) on the support loss, at ``inner_lr``.

    With ``transductive=False``, ``evaluate`` and ``adapt`` predict each query example with
    one forward pass over the support examples and that example (batch norm then sees the
    support statistics plus one example), as Nichol et al.'s ``_test_predictions``.

    The model is split into ``task_inputs`` (what is computed once from the
    meta-parameters, e.g. ANIL's features) and ``task_output`` (the part that depends on
    the adapted weights), so the inner loop only recomputes what changes.
    """

    Options: type[InnerLoopOptions] = InnerLoopOptions
    options: InnerLoopOptions
    head_only = False
    """Adapt only ``head.*`` (ANIL)."""

    # -- which weights adapt, and how the model splits around them ------------------------

    def adapted_names(self) -> list[str]:
        """Names (in ``self.model.names``) of the weights the inner loop adapts: all of them,
        or ``head.*`` when ``head_only``."""
        if self.head_only:
            self.model.require_parts(self.name)
            return list(self.model.names[self.model.head_index :])
        return list(self.model.names)

    def extra_parameters(self) -> dict[str, tf.Tensor]:
        """The inner rule's learned state (e.g. Meta-SGD's rates), saved as ``inner.<name>``."""
        check_recompute(self.options, self.rule)
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        adapted = {n: weights[n] for n in self.adapted_names()}
        return {f"inner.{n}": t for n, t in self.rule.init(adapted, self.options.inner_lr).items()}

    def inner_learnables(self) -> dict[str, tf.Variable]:
        """The inner rule's meta-learned variables (``self.extra``), keyed by weight name."""
        return {k[len("inner.") :]: v for k, v in self.extra.items()}

    def task_inputs(self, x: tf.Tensor) -> tf.Tensor:
        """What ``x`` becomes before the adapted weights act (computed once per task):
        ``features`` of ``x`` when ``head_only``, else ``x`` itself."""
        if not self.head_only:
            return x
        return self.model.embed(self.feature_weights, x)

    def task_output(self, fast: Sequence[tf.Tensor], h: tf.Tensor) -> tf.Tensor:
        """The model's output on ``h = task_inputs(x)`` with the per-task adapted weights
        ``fast`` (in the order of :meth:`adapted_names`) in place of the meta-parameters."""
        if self.head_only:
            return self.model.head(fast, h, per_task=True)
        return self.forward_per_task(fast, h)

    def query_output(self, fast: Weights | None, sx: tf.Tensor, qx: tf.Tensor) -> tf.Tensor:
        """Outputs ``(T, Q, out)`` on the query inputs ``qx`` of the per-task adapted weights
        ``fast`` (``None``: the meta-parameters): one batch of queries when transductive,
        else row ``j`` is the last output of a pass over the support set and query ``j``."""
        transductive = self.options.transductive
        if fast is None:
            return (
                self.model(self.model.variables, qx)
                if transductive
                else per_query(lambda x: self.model(self.model.variables, x), sx, qx)
            )
        if transductive:
            return self.task_output(fast, self.task_inputs(qx))

        def forward(x: tf.Tensor) -> tf.Tensor:
            h = self.task_inputs(x)
            if sx.shape[0] == 1:  # one set of weights: one batched forward, batch norm per row
                shared = [w[0] for w in fast]
                return self.model.head(shared, h) if self.head_only else self.model(shared, h)
            return self.task_output([tf.repeat(w, qx.shape[1], axis=0) for w in fast], h)

        return per_query(forward, sx, qx)

    # -- the inner loop ----------------------------------------------------------------------

    def adapt_tasks(self, h_support: tf.Tensor, sy: tf.Tensor, steps: int, second_order: bool = False) -> Weights:
        """Per-task adapted weights (those of :meth:`adapted_names`, with a task axis) after
        ``steps`` inner-rule steps on the support loss of ``h_support = task_inputs(sx)``;
        differentiable back to the meta-parameters and the rule's learnables when
        ``second_order`` (else the inner gradients are constants)."""
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        names = self.adapted_names()
        fast = tile([weights[n] for n in names], h_support.shape[0])
        if second_order and getattr(self.options, "recompute_inner", False):
            return self._recomputed_adaptation(names, fast, h_support, sy, steps)
        update = self.rule_update(names, self.inner_learnables(), self.options.inner_lr)
        return self.inner_loop(self.task_output, fast, h_support, sy, steps, update, second_order)

    def _recomputed_adaptation(
        self, names: Sequence[str], fast: Weights, h_support: tf.Tensor, sy: tf.Tensor, steps: int
    ) -> Weights:
        """:meth:`adapt_tasks`'s second-order steps with ``recompute_inner``
        (:func:`~metaplug_tensorflow.algorithms.base.recomputed_steps`): every tensor a step
        reads is passed explicitly, the rule's learnables as values read from their variables
        (``h_support`` too: gradients reach what it was computed from, ANIL's features)."""
        rates = list(self.inner_learnables().items())

        def step(*tensors: tf.Tensor) -> list[tf.Tensor]:
            weights, h = list(tensors[: len(names)]), tensors[len(names)]
            learnables = {n: t for (n, _), t in zip(rates, tensors[len(names) + 1 :], strict=True)}
            update = self.rule_update(names, learnables, self.options.inner_lr)
            return self.inner_loop(self.task_output, weights, h, sy, 1, update, True)

        context = [h_support, *(tf.convert_to_tensor(v) for _, v in rates)]
        return recomputed_steps(step, fast, context, steps)

    def adapt_support(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        """The per-task adapted weights ``evaluate`` and ``adapt`` predict with (an algorithm
        with its own inner loop overrides this, e.g. Reptile)."""
        return self.adapt_tasks(self.task_inputs(sx), sy, steps)

    def evaluate_tasks(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, steps: int, *extra: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        before = self.query_output(None, sx, qx)
        after = self.query_output(self.adapt_support(sx, sy, steps, *extra), sx, qx)
        return {**self.loss_and_accuracy(after, qy), "loss_before": task_loss(self.problem, before, qy)}

    def adapted_state(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        """The model's weights with the adapted ones in place, and (not transductive) the
        support set to predict with."""
        weights = dict(zip(self.model.names, (tf.identity(v) for v in self.model.variables), strict=True))
        fast = self.adapt_support(sx, sy, steps, *extra)
        weights.update((n, w[0]) for n, w in zip(self.adapted_names(), fast, strict=True))
        return list(weights.values()) if self.options.transductive else [*weights.values(), sx]

    def predict_adapted(self, state: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        if self.options.transductive:
            return self.model(state, x)
        *weights, sx = state
        return per_query(lambda batch: self.model(weights, batch), sx, x)

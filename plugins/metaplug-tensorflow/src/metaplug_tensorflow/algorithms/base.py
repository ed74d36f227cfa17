"""What every TensorFlow algorithm shares: construction checks, compiled entry points,
the inner loop, numpy state and adapted models.

The extension API (see "Writing a TensorFlow algorithm" in metaplug-tensorflow's
README): subclasses call :meth:`TFAlgorithm.set_meta_parameters` in ``__init__`` and
implement :meth:`~TFAlgorithm.meta_gradients` (outer gradients summed over a group of
tasks), :meth:`~TFAlgorithm.evaluate_tasks` and :meth:`~TFAlgorithm.adapt_task` (and
:meth:`~TFAlgorithm.predict_task` when an adapted model is more than the model's
weights). The base class runs them over the tasks of a batch either vectorized (all
tasks at once) or in a ``tf.while_loop`` (one task at a time), and compiles each entry
point once per input shape with ``tf.function``; nothing is traced per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.errors import ConfigError
from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.backend import TensorFlowBackend
from metaplug_tensorflow.layout import to_native, to_shared
from metaplug_tensorflow.losses import task_accuracy, task_losses
from metaplug_tensorflow.models import FunctionalModel
from metaplug_tensorflow.optimizers import OuterOptimizer, adam

BATCHING = ("auto", "vectorized", "loop")
AUTO_BATCHING = {"mlp": "vectorized", "conv4": "loop"}
"""Measured fastest per model on CPU (see the plugin's README)."""

Weights = list[tf.Tensor]
StepRule = Callable[[Sequence[tf.Tensor], Sequence[tf.Tensor], Sequence[tf.Variable]], list[tf.Tensor]]


def tile(params: Sequence[tf.Tensor], num_tasks: int) -> Weights:
    """One copy of each weight per task (a leading task axis); gradients sum back."""
    return [tf.broadcast_to(p, [num_tasks, *p.shape]) for p in params]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int if it is an integer >= ``minimum``, else a one-line ConfigError."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a positive number, else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class TFAlgorithm:
    """Base class of TensorFlow algorithms (:class:`metaplug.contract.interfaces.Algorithm`; the
    extension API: see "Writing a TensorFlow algorithm" in metaplug-tensorflow's README).

    Subclasses call :meth:`set_meta_parameters` at the end of ``__init__`` and implement
    :meth:`meta_gradients`, :meth:`evaluate_tasks` and :meth:`adapt_task`; they may
    override :meth:`predict_task`, :meth:`evaluation_steps`, :meth:`extra_train_inputs`,
    :meth:`adaptation_inputs` and :attr:`has_loss_before`, and save further variables
    with :meth:`register_state`. They call the helpers :meth:`forward_per_task`,
    :meth:`descend`, :meth:`metrics`, :meth:`gradients` and :func:`tile`.

    Set by ``__init__``: ``self.spec``, ``self.problem`` (``spec.problem``),
    ``self.backend`` (a :class:`~metaplug_tensorflow.backend.TensorFlowBackend`),
    ``self.model`` (a :class:`~metaplug_tensorflow.models.FunctionalModel`) and
    ``self.batching`` (``"vectorized"`` or ``"loop"``, resolved from ``"auto"``); by
    :meth:`set_meta_parameters`: ``self.trainables`` and ``self.optimizer``.

    The hooks run inside ``tf.function`` (traced once per input shape): use TensorFlow
    operations on their arguments, no Python side effects, and no ``.numpy()``.
    """

    problems: tuple[str, ...] = ("regression", "classification")
    name = "algorithm"

    def __init__(self, backend: TensorFlowBackend | None, model: FunctionalModel | None,
                 spec: TaskSpec, optimizer: Callable[..., OuterOptimizer] | None,
                 batching: str) -> None:
        if spec.problem not in self.problems:
            raise ConfigError(f"{self.name} supports {' and '.join(self.problems)} only, "
                              f"not {spec.problem} tasks")
        self.backend = backend if backend is not None else TensorFlowBackend()
        if not isinstance(self.backend, TensorFlowBackend):
            raise ConfigError(f"{self.name} (tensorflow) needs the tensorflow backend, "
                              f"got {type(backend).__name__}")
        if model is None:
            model = self.backend.build_model(ModelSpec(spec.default_model, spec.input_shape, spec.output_size))
        if not isinstance(model, FunctionalModel):
            raise ConfigError("the tensorflow algorithms take a model from TensorFlowBackend.build_model, "
                              f"got {type(model).__name__}")
        if batching not in BATCHING:
            raise ConfigError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self.model, self.spec, self.problem = model, spec, spec.problem
        self.batching = AUTO_BATCHING.get(model.spec.name, "loop") if batching == "auto" else batching
        self._optimizer_factory = optimizer or functools.partial(adam, lr=1e-3)
        self._train_fn = tf.function(self._train_impl)
        self._evaluate_fn = tf.function(self._evaluate_impl)
        self._adapt_fn = tf.function(self.adapt_task)
        self._predict_fn = tf.function(self.predict_task)

    @property
    def vectorized(self) -> bool:
        """Whether the hooks see all tasks at once (else one task at a time)."""
        return self.batching == "vectorized"

    def set_meta_parameters(self, trainables: Mapping[str, tf.Variable]) -> None:
        """Declare the meta-parameters: ``state_dict`` name -> ``tf.Variable``, in the order
        :meth:`meta_gradients` returns their gradients. Call once, at the end of
        ``__init__``; it builds the outer optimizer over them. Model weights are named
        ``model.<name>`` (``self.model.names``/``self.model.variables``); create further
        variables (e.g. learned inner rates) inside ``self.backend.scope()``. Every model
        weight is saved, trained or not."""
        self.trainables = dict(trainables)
        self._saved = {**{f"model.{n}": v for n, v in zip(self.model.names, self.model.variables)},
                       **self.trainables}
        with self.backend.scope():
            self.optimizer = self._optimizer_factory(list(self.trainables.values()))

    def register_state(self, variables: Mapping[str, tf.Variable]) -> None:
        """Save further variables that the outer optimizer does not train (e.g. an inner
        optimizer's slots, a sampling counter) in ``state_dict`` under these names, after
        :meth:`set_meta_parameters`. Weight-shaped ones are converted to the shared layout
        like the model's."""
        self._saved.update(variables)

    # -- the inner loop ------------------------------------------------------------

    def forward_per_task(self, weights: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The full model on weights with a task axis."""
        return self.model(weights, x, per_task=True, vectorized=self.vectorized)

    def descend(self, forward: Callable[[Weights, tf.Tensor], tf.Tensor], weights: Weights,
                x: tf.Tensor, y: tf.Tensor, steps: int, rule: StepRule,
                learnables: Sequence[tf.Variable] = (), second_order: bool = False) -> Weights:
        """``steps`` inner updates of per-task ``weights`` on ``(x, y)``.

        The tape watches the weights explicitly (they are tensors, not variables;
        unwatched, their gradient would silently be ``None``). The summed loss gives
        each task the gradient of its own loss. Without ``second_order`` the inner
        gradients are constants for the outer gradient (first-order approximation).
        """
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(weights)
                loss = tf.reduce_sum(task_losses(self.problem, forward(weights, x), y))
            grads = tape.gradient(loss, weights)
            if any(g is None for g in grads):
                raise RuntimeError("inner-loop gradient is None: a weight does not reach the loss")
            grads = [tf.convert_to_tensor(g) for g in grads]  # vectorized_map may give IndexedSlices
            if not second_order:
                grads = [tf.stop_gradient(g) for g in grads]
            weights = rule(weights, grads, learnables)
        return weights

    def metrics(self, outputs: tf.Tensor, targets: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per-task ``loss`` (and ``accuracy``) of outputs ``(T, N, out)``."""
        result = {"loss": task_losses(self.problem, outputs, targets)}
        if self.problem == "classification":
            result["accuracy"] = task_accuracy(outputs, targets)
        return result

    def gradients(self, loss: tf.Tensor, tape: tf.GradientTape) -> list[tf.Tensor]:
        """Gradients of ``loss`` for every meta-parameter; a missing one is an error, not a zero."""
        grads = tape.gradient(loss, list(self.trainables.values()))
        missing = [n for n, g in zip(self.trainables, grads) if g is None]
        if missing:
            raise RuntimeError(f"meta-gradient is None for {missing}")
        return [tf.convert_to_tensor(g) for g in grads]

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The keys of :meth:`metrics`: ``loss`` (and ``accuracy`` for classification)."""
        return ("loss", "accuracy") if self.problem == "classification" else ("loss",)

    def over_tasks(self, fn: Callable[..., tuple[list[tf.Tensor], dict[str, tf.Tensor]]],
                   tensors: Sequence[tf.Tensor], sums: Sequence[tf.Tensor],
                   keys: Sequence[str]) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """Run ``fn(*tensors) -> (sums over tasks, per-task metrics)`` on the whole batch
        (vectorized) or one task at a time in a ``tf.while_loop`` (loop: traced once,
        memory for one task), adding up the sums and stacking the ``keys`` metrics.
        ``sums`` gives the zero values of the sums."""
        if self.vectorized:
            return fn(*tensors)
        num_tasks = tensors[0].shape[0]
        arrays = {k: tf.TensorArray(self.backend.dtype, size=num_tasks) for k in keys}

        def body(i: tf.Tensor, totals: list[tf.Tensor], arrays: dict[str, tf.TensorArray]) -> tuple:
            part, metrics = fn(*[t[i][None] for t in tensors])  # static task axis of 1
            totals = [a + b for a, b in zip(totals, part, strict=True)]
            return i + 1, totals, {k: arrays[k].write(i, metrics[k][0]) for k in keys}

        _, totals, arrays = tf.while_loop(lambda i, *_: i < num_tasks, body,
                                          (tf.constant(0), list(sums), arrays), parallel_iterations=1)
        return totals, {k: a.stack() for k, a in arrays.items()}

    def _train_impl(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        """One outer step on the mean over tasks of :meth:`meta_gradients`."""
        num_tasks = tensors[0].shape[0]
        zeros = [tf.zeros_like(v) for v in self.trainables.values()]
        sums, metrics = self.over_tasks(self.meta_gradients, tensors, zeros, self.metric_keys)
        self.optimizer.apply([s / num_tasks for s in sums])
        return {k: tf.reduce_mean(v) for k, v in metrics.items()}

    def _evaluate_impl(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor,
                       steps: int, *extra: tf.Tensor) -> dict[str, tf.Tensor]:
        def evaluate(*tensors: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
            return [], self.evaluate_tasks(*tensors[:4], steps, *tensors[4:])

        keys = self.metric_keys + (("loss_before",) if self.has_loss_before else ())
        result = self.over_tasks(evaluate, (sx, sy, qx, qy, *extra), [], keys)[1]
        if not self.has_loss_before:  # NaN marks an undefined loss before adaptation
            result["loss_before"] = tf.fill(tf.shape(result["loss"]), tf.constant(float("nan"), result["loss"].dtype))
        return result

    has_loss_before = True
    """Whether there is a loss before adaptation (ProtoNets have none: ``evaluate`` gives NaN)."""

    # -- the public API ------------------------------------------------------------

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        self._check_batch(batch)
        with self.backend.scope():
            e = self.backend.to_tensors(batch)
            extra = self.extra_train_inputs(batch)
            metrics = self._train_fn(e.support_x, e.support_y, e.query_x, e.query_y, *extra)
        return {k: float(v) for k, v in metrics.items()}

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        self._check_batch(batch)
        steps = self.evaluation_steps(steps)
        with self.backend.scope():
            e = self.backend.to_tensors(batch)
            extra = self.adaptation_inputs(batch.support_x.shape[0], batch.support_x.shape[1], steps)
            result = self._evaluate_fn(e.support_x, e.support_y, e.query_x, e.query_y, steps, *extra)
        return {k: v.numpy() for k, v in result.items()}

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> TFAdaptedModel:
        support_x, support_y = np.asarray(support_x), np.asarray(support_y)
        self._check_examples(support_x[None])
        steps = self.evaluation_steps(steps)
        rank = len(self.spec.input_shape)
        with self.backend.scope():
            x = self.backend.inputs(support_x[None], rank)
            y = self.backend.targets(support_y[None], self.problem)
            weights = self._adapt_fn(x, y, steps, *self.adaptation_inputs(1, support_x.shape[0], steps))
        return TFAdaptedModel(self, [tf.identity(w) for w in weights])

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: to_shared(v.numpy()) for name, v in self._saved.items()}
        optimizer = self.optimizer.state_dict()
        state["optimizer.steps"] = optimizer.pop("steps")
        for slot, arrays in optimizer.items():
            for name, array in zip(self.trainables, arrays, strict=True):
                state[f"optimizer.{slot}.{name}"] = to_shared(array)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            detail = "; ".join(part for part in (
                f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else "",
                f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
                if unexpected else "") if part)
            raise ConfigError(f"state does not fit this {self.name}: {detail}")
        for name, reference in expected.items():
            if np.shape(state[name]) != reference.shape:
                raise ConfigError(f"state entry {name!r} has shape {np.shape(state[name])}, "
                                  f"expected {reference.shape}")
        for name, variable in self._saved.items():
            variable.assign(to_native(np.asarray(state[name])).astype(variable.dtype.as_numpy_dtype))
        optimizer: dict[str, Any] = {"steps": state["optimizer.steps"]}
        for slot in self.optimizer.slots:
            optimizer[slot] = [to_native(np.asarray(state[f"optimizer.{slot}.{n}"])) for n in self.trainables]
        self.optimizer.load_state_dict(optimizer)

    # -- hooks for subclasses ---------------------------------------------------------

    def meta_gradients(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor,
                       *extra: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """Outer gradients and per-task metrics for a group of tasks (required).

        Receives support ``sx`` ``(T, S, ...)``, ``sy`` and query ``qx``, ``qy`` with a
        leading task axis (all tasks of the batch when vectorized, ``T == 1`` in loop
        mode; inputs channels-last), followed by :meth:`extra_train_inputs`. Returns the
        gradient (or outer update direction) of each meta-parameter, summed over the
        ``T`` tasks, in the order given to :meth:`set_meta_parameters`, and
        :meth:`metrics` of the query outputs (per-task ``(T,)`` tensors). The base class
        divides the sums by the number of tasks and applies the outer optimizer.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement meta_gradients()")

    def extra_train_inputs(self, batch: EpisodeBatch) -> tuple[tf.Tensor, ...]:
        """Further tensors for :meth:`meta_gradients`, computed eagerly from the numpy
        batch each step (default: none). Each needs a leading task axis (loop mode slices
        it) and a shape that is the same at every step, or the step is traced again."""
        return ()

    def adaptation_inputs(self, num_tasks: int, support_size: int, steps: int) -> tuple[tf.Tensor, ...]:
        """Further tensors for :meth:`evaluate_tasks` and :meth:`adapt_task`, computed eagerly
        before each ``evaluate`` (``num_tasks`` tasks) and ``adapt`` (one task) with
        ``support_size`` support examples per task (default: none), e.g. the indices of the
        inner loop's mini-batches. Each needs a leading task axis and a shape that does not
        change between calls, or the entry point is traced again."""
        return ()

    def evaluate_tasks(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor,
                       steps: int, *extra: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per-task query metrics after adapting to the support set with ``steps`` inner
        steps (required).

        Receives a group of tasks as :meth:`meta_gradients` does, ``steps`` (a Python
        int: a new value traces again) and :meth:`adaptation_inputs`. Returns :meth:`metrics` of the adapted query
        outputs plus ``loss_before``, the query loss before adaptation, each of shape
        ``(T,)`` (without ``loss_before`` when :attr:`has_loss_before` is false).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate_tasks()")

    def adapt_task(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        """What an adapted model keeps for one task: by default the full list of model
        weights (no task axis) after ``steps`` inner steps (required).

        Receives one task's support set with a task axis of length 1, then
        :meth:`adaptation_inputs` (task axis of 1). The list is passed
        as is to :meth:`predict_task` (and saved by ``export``), so it may hold anything
        that method needs, e.g. the support set.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement adapt_task()")

    def predict_task(self, weights: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Outputs ``(1, N, out)`` of an adapted model: ``weights`` from :meth:`adapt_task`
        and channels-last inputs with a task axis of 1 (default: the model on them)."""
        return self.model(weights, x)

    def evaluation_steps(self, steps: int | None) -> int:
        """Inner steps for ``evaluate``/``adapt`` given the caller's ``steps`` (``None``:
        the algorithm's default). Validate it here (``check_int``); default: always 0, for
        algorithms without an inner loop."""
        return 0

    # -- input checks ------------------------------------------------------------------

    def _check_batch(self, batch: EpisodeBatch) -> None:
        if batch.problem != self.problem:
            raise ConfigError(f"{self.name} was built for {self.problem} tasks, got a {batch.problem} batch")
        self._check_examples(batch.support_x)
        self._check_examples(batch.query_x)

    def _check_examples(self, x: np.ndarray) -> None:
        if tuple(x.shape[2:]) != tuple(self.spec.input_shape):
            raise ConfigError(f"examples have shape {tuple(x.shape[2:])}, the task spec says "
                              f"{tuple(self.spec.input_shape)}")


class TFAdaptedModel:
    """A model adapted to one task: its weights and the algorithm's compiled forward."""

    def __init__(self, algorithm: TFAlgorithm, weights: Weights) -> None:
        self.algorithm, self.weights = algorithm, weights
        self.input_shape = tuple(algorithm.spec.input_shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs ``(N, out)`` for examples ``(N, *input_shape)`` (channels first)."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"examples have shape {tuple(x.shape[1:])}, expected {self.input_shape}")
        backend = self.algorithm.backend
        with backend.scope():
            outputs = self.algorithm._predict_fn(self.weights, backend.inputs(x[None], len(self.input_shape)))
        return outputs.numpy()[0]

    def export(self, path: str | Path) -> Path:
        """Save as a TensorFlow SavedModel serving predictions without metaplug (see
        :func:`metaplug_tensorflow.export.save_adapted`)."""
        from metaplug_tensorflow.export import save_adapted

        return save_adapted(self, path)

    def native_inputs(self, x: tf.Tensor) -> tf.Tensor:
        """Channel-first examples ``(N, *input_shape)`` as the model's inputs ``(1, N, ...)``."""
        if len(self.input_shape) == 3:
            x = tf.transpose(x, [0, 2, 3, 1])
        return tf.cast(x, self.algorithm.backend.dtype)[None]


__all__ = ["TFAlgorithm", "TFAdaptedModel", "tile", "check_int", "check_positive"]

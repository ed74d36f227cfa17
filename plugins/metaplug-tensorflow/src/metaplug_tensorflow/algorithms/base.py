"""What every TensorFlow algorithm shares: construction, compiled entry points, the inner
loop, numpy state and adapted models.

The extension API (see "Writing a TensorFlow algorithm" in metaplug-tensorflow's
README) works on groups of tasks: a subclass implements :meth:`MetaLearner.meta_gradients`,
:meth:`~MetaLearner.evaluate_tasks` and :meth:`~MetaLearner.adapted_state` on tensors with
a leading task axis (and :meth:`~MetaLearner.predict_adapted` when an adapted model is
more than the model's weights). The base class runs them over the tasks of a batch
either vectorized (all tasks at once) or in a ``tf.while_loop`` (one task at a time), and
compiles each entry point once per input shape with ``tf.function``; nothing is traced
per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract import calibration
from metaplug.contract.calibration import BatchingChoice
from metaplug.contract.freezing import Freezing
from metaplug.contract.hyperparameters import BatchingOptions, require_batching_options
from metaplug.contract.interfaces import EpisodeBatch, InnerRule, ModelSpec, TaskSpec, apply_rule, initial_state
from metaplug.contract.options import checked
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.backend import Backend, Episodes
from metaplug_tensorflow.functional import KerasModel, first_line, is_keras_model
from metaplug_tensorflow.inner import resolve_rule
from metaplug_tensorflow.layout import to_native, to_shared
from metaplug_tensorflow.losses import accuracy, task_loss
from metaplug_tensorflow.models import FunctionalModel, LoopForwards, ReplayedForwards, meta_training, task_forwards
from metaplug_tensorflow.optimizers import Adam, OuterOptimizer
from metaplug_tensorflow.precision import Precision

AUTO_BATCHING = {"mlp": "vectorized", "conv4": "loop", "resnet12": "loop"}
"""What ``auto`` runs per model without measuring (measured fastest on a 2-core CPU, see the
plugin's README); the first meta-training step measures instead (:meth:`MetaLearner.settle_batching`)."""

ELIGIBLE_BATCHING = ("loop", "vectorized")
"""The concrete modes ``auto`` may choose between."""

Weights = list[tf.Tensor]
Update = Callable[[Weights, Weights], Weights]
"""One inner step: ``update(weights, grads) -> weights``."""


def tile(params: Sequence[tf.Tensor], num_tasks: int) -> Weights:
    """One copy of each weight per task (a leading task axis); gradients sum back."""
    return [tf.broadcast_to(p, [num_tasks, *p.shape]) for p in params]


def after(tensors: Sequence[tf.Tensor], signals: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``tensors`` unchanged (``t + 0``) but computable only once all ``signals`` are: a data
    dependency on one entry of each, which the graph executor (and XLA, unlike control
    dependencies) honours. ``tf.recompute_grad`` orders its recomputation the same way."""
    ready = tf.stack([tf.reduce_any(tf.cast(tf.reshape(s, [-1])[:1], tf.bool)) for s in signals])
    zero = tf.where(tf.reduce_all(tf.equal(ready, ready)), 0.0, float("nan"))  # always 0
    return [t + tf.cast(zero, t.dtype) for t in tensors]


def recomputed(fn: Callable[..., list[tf.Tensor]]) -> Callable[..., list[tf.Tensor]]:
    """``fn`` (tensors in, a list of tensors out) whose gradient is computed by running
    ``fn`` again under a tape instead of from the forward pass's intermediates. Unlike
    ``tf.recompute_grad``, ``fn`` may take gradients itself (it records on its own tapes),
    so an inner step that contains a gradient can be recomputed and differentiated; the
    variables it reads (a rule's learned rates) get their gradients too.

    The recomputation reads its inputs :func:`after` the incoming gradients: in a compiled
    graph an op runs as soon as its inputs exist, so without that every step's
    recomputation ran during the forward pass and its intermediates waited for the
    backward pass (as much memory as storing them). Its ops are named ``recomputed_step``.
    The recomputation is traced with the meta-training state of the first run
    (:class:`~metaplug_tensorflow.models.ReplayedForwards`), so it draws the same dropout and
    DropBlock masks."""

    @tf.custom_gradient
    def run(*inputs: tf.Tensor) -> Any:
        replay = ReplayedForwards()

        def gradient(*upstream: tf.Tensor, variables: Sequence[tf.Variable] | None = None) -> Any:
            variables = list(variables or [])
            with tf.name_scope("recomputed_step"), replay:
                again_inputs = after(inputs, upstream)
                with tf.GradientTape() as tape:
                    tape.watch(again_inputs)
                    again = fn(*again_inputs)
                found = tape.gradient(
                    again,
                    [*again_inputs, *variables],
                    output_gradients=list(upstream),
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )
            return found[: len(inputs)], found[len(inputs) :]

        return fn(*inputs), gradient

    return run


def recomputed_steps(
    step: Callable[..., list[tf.Tensor]], adapted: Sequence[tf.Tensor], context: Sequence[tf.Tensor], steps: int
) -> list[tf.Tensor]:
    """``steps`` second-order inner steps whose graphs are not stored: ``step(*adapted,
    *context)`` returns the new adapted tensors, and is :func:`recomputed` in the backward
    pass. ``context`` is every other tensor the step reads that needs a gradient (the support
    inputs, the rule's learnables read from their variables): the step must read no variable
    itself. Several steps run in a ``tf.while_loop``, so that the graph holds one step and
    one recomputation however many steps there are (unrolled, the compiled graph of ten
    ResNet-12 steps took more memory than their tensors); the forward passes are numbered
    as unrolled (:class:`~metaplug_tensorflow.models.LoopForwards`), so dropout and
    DropBlock draw what the stored steps draw."""
    run = recomputed(step)
    if steps <= 1:
        return list(run(*adapted, *context)) if steps == 1 else list(adapted)
    numbering = LoopForwards()

    def loop() -> list[tf.Tensor]:
        def body(i: tf.Tensor, *current: tf.Tensor) -> tuple[tf.Tensor, ...]:
            with numbering.iteration(i):
                return (i + 1, *run(*current, *context))

        start = (tf.constant(0), *adapted)
        return list(tf.while_loop(lambda i, *_: i < steps, body, start, parallel_iterations=1)[1:])

    done = loop()
    if numbering.made != numbering.per_iteration:  # a step makes more (or fewer) forwards: number again
        numbering.per_iteration = numbering.made
        done = loop()
    numbering.finish(steps)
    return done


class MetaLearner:
    """Base class of TensorFlow algorithms (:class:`metaplug.contract.interfaces.Algorithm`;
    the extension API: see "Writing a TensorFlow algorithm" in metaplug-tensorflow's
    README).

    Subclasses set ``name``, ``problems`` and ``Options`` (a
    :class:`~metaplug.contract.options.Options` dataclass; the constructor validates the
    keyword options into ``self.options``), implement :meth:`meta_gradients`,
    :meth:`evaluate_tasks` and :meth:`adapted_state`, and may override
    :meth:`predict_adapted`, :meth:`extra_parameters`, :meth:`trained_names`,
    :meth:`setup`, :meth:`extra_train_inputs`, :meth:`adaptation_inputs` and
    :attr:`has_loss_before`. They call the helpers :meth:`inner_loop`,
    :meth:`rule_update`, :meth:`forward_per_task`, :meth:`loss_and_accuracy`,
    :meth:`gradients`, :meth:`outer_gradients` (for an overridden ``_train_impl``),
    :meth:`register_state` and :func:`tile`.

    Set by ``__init__``: ``self.options``, ``self.spec``, ``self.problem``
    (``spec.problem``), ``self.backend`` (a :class:`~metaplug_tensorflow.backend.Backend`),
    ``self.model`` (a :class:`~metaplug_tensorflow.models.FunctionalModel`),
    ``self.mode`` (the resolved batching mode: ``"vectorized"`` or ``"loop"``; for ``auto``,
    :data:`AUTO_BATCHING`'s until the first :meth:`meta_train_step` measures it:
    :meth:`settle_batching`),
    ``self.precision`` (the :class:`~metaplug_tensorflow.precision.Precision` of the
    ``precision`` option, which ``self.model`` computes with and the compiled entry points
    run in),
    ``self.rule`` (the inner rule: ``rule=``, the built-in one the ``inner_rule`` option
    names, or :class:`~metaplug_tensorflow.inner.InnerSGD` without that option; it leaves
    the weights frozen in adaptation unchanged), ``self.freezing`` (the
    :class:`~metaplug.contract.freezing.Freezing` of the ``freeze`` options),
    ``self.extra`` (the variables of :meth:`extra_parameters`), ``self.trainables`` (every
    meta-parameter by ``state_dict`` name) and ``self.optimizer`` (the outer optimizer
    over them).

    The hooks run inside ``tf.function`` (traced once per input shape): use TensorFlow
    operations on their arguments, no Python side effects, and no ``.numpy()``.
    """

    name = ""
    problems: tuple[str, ...] = ("regression", "classification")
    Options: type[BatchingOptions] = BatchingOptions
    has_loss_before = True
    """Whether there is a loss before adaptation (ProtoNets have none: ``evaluate`` gives NaN)."""
    adapts_weights = True
    """Whether :meth:`adapted_state` is the model's full list of weights (ProtoNets keep the
    support set instead)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        require_batching_options(cls)

    def __init__(
        self,
        backend: Backend | None = None,
        model: FunctionalModel | None = None,
        spec: TaskSpec | None = None,
        optimizer: Callable[..., OuterOptimizer] | None = None,
        rule: InnerRule | None = None,
        **options: Any,
    ) -> None:
        self.options = self.Options.parse(options, owner=f"algorithm {self.name!r}")
        if spec is None:
            raise ConfigError(f"{self.name} needs the task spec (spec=sampler.spec)")
        if spec.problem not in self.problems:
            raise ConfigError(f"{self.name} supports {' and '.join(self.problems)} only, not {spec.problem} tasks")
        self.spec, self.problem = spec, spec.problem
        self.backend = backend if backend is not None else Backend()
        if not isinstance(self.backend, Backend):
            raise ConfigError(f"{self.name} (tensorflow) needs the tensorflow backend, got {type(backend).__name__}")
        if model is None:
            model = self.backend.build_model(ModelSpec(spec.default_model, spec.input_shape, spec.output_size))
        if is_keras_model(model):
            with self.backend.scope():
                keras_spec = ModelSpec("keras", spec.input_shape, spec.output_size)
                model = KerasModel.wrap(model, keras_spec, self._native()[1])
            self.backend = self.backend.with_dtype(model.dtype)  # the model's dtype decides, as on torch
        if not isinstance(model, FunctionalModel):
            raise ConfigError(
                "the tensorflow algorithms take a Keras model or a model from metaplug_tensorflow's "
                f"Backend.build_model, got {type(model).__module__}.{type(model).__qualname__}"
            )
        self.model = model
        self.precision = Precision(self.options.precision, self.backend.dtype)
        self.precision.apply(self.model, self._native()[1])
        self.check_model()
        self.mode = self._resolve_batching()
        self.auto_candidates = ELIGIBLE_BATCHING
        """The concrete modes ``auto`` may choose between."""
        self.batching_choice: BatchingChoice | None = None
        """What ``auto`` stands for and how it was chosen, once :meth:`settle_batching` has run."""
        if self.options.batching != "auto":
            self.batching_choice = BatchingChoice(self.mode, "requested")
        self.freezing = Freezing.resolve(self.options.freeze, self.options.freeze_during, self.model.names)
        self.rule = self.freezing.rule(resolve_rule(rule, getattr(self.options, "inner_rule", None), self.name))
        with self.backend.scope():
            self.extra = {k: tf.Variable(v, dtype=self.backend.dtype) for k, v in self.extra_parameters().items()}
        weights = dict(zip(self.model.names, self.model.variables, strict=True))
        self.trainables: dict[str, tf.Variable] = {
            **{f"model.{n}": weights[n] for n in self.trained_names()},
            **self.extra,
        }
        self._saved = {**{f"model.{n}": v for n, v in weights.items()}, **self.trainables}
        with self.backend.scope():
            self.optimizer = (optimizer or Adam)(list(self.trainables.values()))
            self._first_task = tf.Variable(0, dtype=tf.int32, trainable=False, name="first_task")
            """The batch's ``first_task``, read when the compiled step runs."""
        self._compile()
        self._initial_fn = tf.function(lambda weights, x: self.model(weights, x))
        self.setup()
        if self.backend.replicas is not None:  # several devices: average the gradients over them
            self.backend.replicas.adopt(self)

    def _compile(self, train: bool = True) -> None:
        """The compiled entry points (without ``train``: but the training step), traced with
        ``self.mode`` at their first call."""
        if train:
            self._train_fn = tf.function(self._train_impl)
        self._evaluate_fn = tf.function(self._evaluate_impl)
        self._adapt_fn = tf.function(self.adapted_state)
        self._predict_fn = tf.function(self.predict_adapted)

    def initial_model(self) -> AdaptedModel:
        """The meta-learned model itself, not adapted to any task (what ``export`` writes
        without a support set)."""
        return AdaptedModel(self, [tf.identity(v) for v in self.model.variables], self._initial_fn)

    def _native(self) -> tuple[tf.DType, tuple[int, ...]]:
        """The backend's dtype and the shape of one example in TensorFlow's layout."""
        shape = tuple(self.spec.input_shape)
        return self.backend.dtype, (*shape[1:], shape[0]) if len(shape) == 3 else shape

    def check_model(self) -> None:
        """Fail with one line when the model does not fit the tasks: run it on two zero
        examples and compare its output with ``(2, spec.output_size)`` (override for an
        algorithm that uses the model otherwise, e.g. only its embedding)."""
        outputs = self.probe_model(lambda x: self.model(self.model.variables, x))
        self.spec.check_output_shape(outputs)

    def probe_model(self, forward: Callable[[tf.Tensor], tf.Tensor]) -> tuple[int, ...]:
        """The shape of ``forward``'s outputs for two zero examples (no task axis); a model
        that fails on them is a :class:`~metaplug.errors.ConfigError` naming the input shape."""
        dtype, example = self._native()
        try:
            with self.backend.scope():
                outputs = forward(tf.zeros([1, 2, *example], dtype))
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise ConfigError(
                f"the model fails on examples of shape {tuple(self.spec.input_shape)} (the tasks' inputs): "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from None
        return tuple(outputs.shape[1:])

    def _resolve_batching(self) -> str:
        batching, modes = self.options.batching, self.backend.batching_modes
        if batching not in modes:
            raise ConfigError(
                f"batching {batching!r} is not available on backend 'tensorflow'; it runs {', '.join(modes)}"
            )
        return AUTO_BATCHING.get(self.model.spec.name, "loop") if batching == "auto" else batching

    @property
    def vectorized(self) -> bool:
        """Whether the hooks see all tasks at once (else one task at a time)."""
        return self.mode == "vectorized"

    @property
    def feature_weights(self) -> list[tf.Variable]:
        """The model's ``features.*`` variables (all but the head)."""
        return self.model.variables[: self.model.head_index]

    # -- what subclasses implement or override --------------------------------------------

    def extra_parameters(self) -> dict[str, Any]:
        """Initial values of meta-learned tensors besides the model's, keyed by their
        ``state_dict`` name (default: none).

        Called once by ``__init__`` (inside ``self.backend.scope()``) after
        ``self.options``, ``self.model`` and ``self.rule`` are set; the values become
        ``tf.Variable`` objects of the backend's dtype in ``self.extra``, which the outer
        optimizer trains (after the model weights, in this order) and the state saves.
        """
        return {}

    def trained_names(self) -> list[str]:
        """The model weights the outer optimizer trains (default: all of them; ProtoNets
        leave out the unused head). Every model weight is saved, trained or not."""
        return list(self.model.names)

    def setup(self) -> None:
        """Called once at the end of ``__init__``, with everything set: create further state
        (variables inside ``self.backend.scope()``, saved with :meth:`register_state`).
        Default: nothing."""

    def meta_gradients(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, *extra: tf.Tensor
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """Outer gradients and per-task metrics for a group of tasks (required).

        Receives support ``sx`` ``(T, S, ...)``, ``sy`` and query ``qx``, ``qy`` with a
        leading task axis (all tasks of the batch when vectorized, ``T == 1`` in loop
        mode; inputs channels-last), followed by :meth:`extra_train_inputs`. Returns the
        gradient (or outer update direction) of each meta-parameter, summed over the
        ``T`` tasks, in the order of ``self.trainables``, and :meth:`loss_and_accuracy`
        of the query outputs (per-task ``(T,)`` tensors). The base class divides the sums
        by the number of tasks and applies the outer optimizer.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement meta_gradients()")

    def evaluate_tasks(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, steps: int, *extra: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Per-task query metrics after adapting to the support set with ``steps`` inner
        steps (required).

        Receives a group of tasks as :meth:`meta_gradients` does, ``steps`` (a Python
        int: a new value traces again) and :meth:`adaptation_inputs`. Returns
        :meth:`loss_and_accuracy` of the adapted query outputs plus ``loss_before``, the
        query loss before adaptation, each of shape ``(T,)`` (without ``loss_before`` when
        :attr:`has_loss_before` is false).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate_tasks()")

    def adapted_state(self, sx: tf.Tensor, sy: tf.Tensor, steps: int, *extra: tf.Tensor) -> Weights:
        """What an adapted model keeps for one task: by default the full list of model
        weights (no task axis) after ``steps`` inner steps (required).

        Receives one task's support set with a task axis of length 1, then
        :meth:`adaptation_inputs` (task axis of 1). The list is passed as is to
        :meth:`predict_adapted` (and saved by ``export``), so it may hold anything that
        method needs, e.g. the support set.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement adapted_state()")

    def predict_adapted(self, state: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """Outputs ``(1, N, out)`` of an adapted model: ``state`` from :meth:`adapted_state`
        and channels-last inputs with a task axis of 1 (default: the model on them)."""
        return self.model(state, x)

    def extra_train_inputs(self, batch: EpisodeBatch) -> tuple[tf.Tensor, ...]:
        """Further tensors for :meth:`meta_gradients`, computed eagerly from the numpy
        batch each step (default: none). Each needs a leading task axis (loop mode slices
        it) and a shape that is the same at every step, or the step is traced again."""
        return ()

    def adaptation_inputs(self, num_tasks: int, support_size: int, steps: int) -> tuple[tf.Tensor, ...]:
        """Further tensors for :meth:`evaluate_tasks` and :meth:`adapted_state`, computed
        eagerly before each ``evaluate`` (``num_tasks`` tasks) and ``adapt`` (one task) with
        ``support_size`` support examples per task (default: none), e.g. the indices of the
        inner loop's mini-batches. Each needs a leading task axis and a shape that does not
        change between calls, or the entry point is traced again."""
        return ()

    # -- helpers for subclasses -------------------------------------------------------------

    def register_state(self, variables: Mapping[str, tf.Variable]) -> None:
        """Save further variables that the outer optimizer does not train (e.g. an inner
        optimizer's slots) in ``state_dict`` under these names (call it from :meth:`setup`).
        Weight-shaped ones are converted to the shared layout like the model's."""
        self._saved.update(variables)

    def forward_per_task(self, weights: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        """The full model on weights with a task axis, batched as ``self.mode`` says."""
        return self.model(weights, x, per_task=True, vectorized=self.vectorized)

    def inner_loop(
        self,
        forward: Callable[[Weights, tf.Tensor], tf.Tensor],
        weights: Weights,
        x: tf.Tensor,
        y: tf.Tensor,
        steps: int,
        update: Update,
        second_order: bool = False,
    ) -> Weights:
        """``steps`` inner updates ``weights = update(weights, grads)`` of per-task ``weights``
        on the loss of ``forward(weights, x)`` against ``y``.

        The tape watches the weights explicitly (they are tensors, not variables;
        unwatched, their gradient would silently be ``None``). The summed loss gives
        each task the gradient of its own loss. Without ``second_order`` the inner
        gradients are constants for the outer gradient (first-order approximation).
        """
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(weights)
                loss = tf.reduce_sum(task_loss(self.problem, forward(weights, x), y))
            grads = tape.gradient(loss, weights)
            if any(g is None for g in grads):
                raise RuntimeError("inner-loop gradient is None: a weight does not reach the loss")
            grads = [tf.convert_to_tensor(g) for g in grads]  # vectorized_map may give IndexedSlices
            if not second_order:
                grads = [tf.stop_gradient(g) for g in grads]
            weights = update(weights, grads)
        return weights

    def rule_update(
        self, names: Sequence[str], learnables: Mapping[str, tf.Tensor], lr: float, rule: InnerRule | None = None
    ) -> Update:
        """One step of ``rule`` (default ``self.rule``) at rate ``lr`` as an :data:`Update` of
        weight lists, the weights being named ``names`` (the rule works on name-keyed mappings).
        Each call returns a new update for one adaptation: a stateful rule's state starts fresh
        at its first step and is carried through its later steps (the loop unrolls at tracing)."""
        stepper = self.rule if rule is None else rule
        state: dict[str, Any] | None = None

        def update(weights: Weights, grads: Weights) -> Weights:
            nonlocal state
            named = dict(zip(names, weights, strict=True))
            if state is None:
                state = initial_state(stepper, named)
            stepped, state = apply_rule(stepper, named, dict(zip(names, grads, strict=True)), learnables, lr, state)
            return [stepped[n] for n in names]

        return update

    def loss_and_accuracy(self, outputs: tf.Tensor, targets: tf.Tensor) -> dict[str, tf.Tensor]:
        """Per-task ``loss`` (cross-entropy of logits or MSE, by ``spec.problem``) and, for
        classification, ``accuracy`` of outputs ``(T, N, out)``, each ``(T,)``."""
        result = {"loss": task_loss(self.problem, outputs, targets)}
        if self.problem == "classification":
            result["accuracy"] = accuracy(outputs, targets)
        return result

    def gradients(self, loss: tf.Tensor, tape: tf.GradientTape) -> list[tf.Tensor]:
        """Gradients of ``loss`` for every meta-parameter; a missing one is an error, not a zero."""
        grads = tape.gradient(loss, list(self.trainables.values()))
        missing = [n for n, g in zip(self.trainables, grads, strict=True) if g is None]
        if missing:
            raise RuntimeError(f"meta-gradient is None for {missing}")
        return [tf.convert_to_tensor(g) for g in grads]

    def outer_gradients(self, sums: Sequence[tf.Tensor], num_tasks: int) -> list[tf.Tensor | None]:
        """What the outer optimizer applies: the mean over ``num_tasks`` tasks of the summed
        gradients ``sums`` (in the order of ``self.trainables``), ``None`` for the weights
        frozen in training (the optimizer skips them)."""
        frozen = {f"model.{n}" for n in self.freezing.training}
        return [None if name in frozen else s / num_tasks for name, s in zip(self.trainables, sums, strict=True)]

    def evaluation_steps(self, steps: int | None) -> int:
        """Inner steps for ``evaluate``/``adapt``: ``steps``, checked (an integer >= 0), or
        ``self.options.evaluation_steps`` (0 without an inner loop) when ``None``."""
        if steps is None:
            return self.options.evaluation_steps
        return checked("steps", steps, int, minimum=0)

    def episode_tensors(self, batch: EpisodeBatch) -> Episodes:
        """``batch`` as tensors on the backend's device (inputs channels last), after checking
        its problem kind and example shape against the spec."""
        self.check_batch(batch)
        return self.backend.to_tensors(batch)

    def check_batch(self, batch: EpisodeBatch) -> None:
        """``batch``'s problem kind and example shape are the spec's."""
        if batch.problem != self.problem:
            raise ConfigError(f"{self.name} was built for {self.problem} tasks, got a {batch.problem} batch")
        self._check_examples(batch.support_x)
        self._check_examples(batch.query_x)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The keys of :meth:`loss_and_accuracy`: ``loss`` (and ``accuracy`` for classification)."""
        return ("loss", "accuracy") if self.problem == "classification" else ("loss",)

    def map_tasks(
        self,
        fn: Callable[..., tuple[list[tf.Tensor], dict[str, tf.Tensor]]],
        tensors: Sequence[tf.Tensor],
        sums: Sequence[tf.Tensor],
        keys: Sequence[str],
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """Run ``fn(*tensors) -> (sums over tasks, per-task metrics)`` on the whole batch
        (vectorized) or one task at a time in a ``tf.while_loop`` (loop: traced once,
        memory for one task), adding up the sums and stacking the ``keys`` metrics.
        ``sums`` gives the zero values of the sums. Each call of ``fn`` is traced in
        :func:`~metaplug_tensorflow.models.task_forwards` of its first task's position, so
        a model's training-time randomness is the same in both modes."""
        if self.vectorized:
            with task_forwards(0):
                return fn(*tensors)
        num_tasks = tensors[0].shape[0]
        arrays = {k: tf.TensorArray(self.backend.dtype, size=num_tasks) for k in keys}

        def body(i: tf.Tensor, totals: list[tf.Tensor], arrays: dict[str, tf.TensorArray]) -> tuple:
            with task_forwards(i):
                part, metrics = fn(*[t[i][None] for t in tensors])  # static task axis of 1
            totals = [a + b for a, b in zip(totals, part, strict=True)]
            return i + 1, totals, {k: arrays[k].write(i, metrics[k][0]) for k in keys}

        _, totals, arrays = tf.while_loop(
            lambda i, *_: i < num_tasks, body, (tf.constant(0), list(sums), arrays), parallel_iterations=1
        )
        return totals, {k: a.stack() for k, a in arrays.items()}

    # -- the compiled entry points ------------------------------------------------------------

    def _train_impl(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        """One outer step on the mean over tasks of :meth:`meta_gradients`."""
        num_tasks = tensors[0].shape[0]
        zeros = [tf.zeros_like(v) for v in self.trainables.values()]
        sums, metrics = self.map_tasks(self.meta_gradients, tensors, zeros, self.metric_keys)
        self.optimizer.apply(self.outer_gradients(sums, num_tasks))
        return {k: tf.reduce_mean(v) for k, v in metrics.items()}

    def _evaluate_impl(
        self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, qy: tf.Tensor, steps: int, *extra: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        def evaluate(*tensors: tf.Tensor) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
            return [], self.evaluate_tasks(*tensors[:4], steps, *tensors[4:])

        keys = self.metric_keys + (("loss_before",) if self.has_loss_before else ())
        result = self.map_tasks(evaluate, (sx, sy, qx, qy, *extra), [], keys)[1]
        if not self.has_loss_before:  # NaN marks an undefined loss before adaptation
            result["loss_before"] = tf.fill(tf.shape(result["loss"]), tf.constant(float("nan"), result["loss"].dtype))
        return result

    # -- the Algorithm interface ----------------------------------------------------------------

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update on ``batch``; mean query ``loss`` (and ``accuracy``). The first
        one settles ``batching = "auto"`` (:meth:`settle_batching`) on ``batch``."""
        if self.batching_choice is None:
            self.settle_batching(batch)
        return self._meta_train_step(batch)

    def settle_batching(self, batch: EpisodeBatch | None = None, why: str = "") -> BatchingChoice:
        """Fix the concrete mode ``batching = "auto"`` stands for, once, and return it.

        With ``batch``, measured on its first tasks (each mode traced once, then timed) or
        taken from the cache (:func:`metaplug.contract.calibration.choose`); the timed steps
        leave every variable (weights, optimizer and registered state) as it was. Without,
        :data:`AUTO_BATCHING`'s rule (``why`` says why nothing was measured). A run records
        the result in its configuration, so that resuming it runs the same mode.
        """
        if self.batching_choice is not None:
            return self.batching_choice
        if batch is None:
            self.batching_choice = BatchingChoice(self.mode, "rule", why or "not measured")
            return self.batching_choice
        trial = calibration.first_tasks(batch)
        with self._state_kept():
            self.batching_choice = calibration.choose(
                "auto",
                self.mode,
                self.auto_candidates,
                self._calibration_key(batch),
                lambda mode: self._batching_trial(mode, trial),
                tasks=trial.num_tasks,
            )
        self.mode = self.batching_choice.mode
        # an evaluation before traces again with the mode; the training step has not been
        # traced (and may be a subclass's own: MAML++'s variants)
        self._compile(train=False)
        return self.batching_choice

    def _batching_trial(self, mode: str, batch: EpisodeBatch) -> calibration.Step:
        """One meta-training step on ``batch`` in ``mode`` (a function of its own, traced at
        its first call), finished when it returns."""
        compiled = tf.function(self._train_fn.python_function)

        def step() -> None:
            self.mode, self._train_fn = mode, compiled
            self._meta_train_step(batch)  # its metrics are read back: the device has finished

        return step

    def _calibration_key(self, batch: EpisodeBatch) -> dict[str, Any]:
        """This backend's part of the calibration cache's key."""
        options = {k: v for k, v in self.options.as_dict().items() if k != "batching"}
        return {
            "backend": "tensorflow",
            "framework": tf.__version__,
            "device": self.backend.device or ("gpu" if tf.config.list_physical_devices("GPU") else "cpu"),
            "threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "dtype": self.backend.dtype.name,
            "model": self.model.spec.name,
            "weights": calibration.digest(
                [[n, list(v.shape)] for n, v in zip(self.model.names, self.model.variables, strict=True)]
            ),
            "algorithm": self.name,
            "options": options,
            "episodes": [list(batch.support_x.shape[1:]), list(batch.query_x.shape[1:]), batch.num_tasks],
        }

    @contextlib.contextmanager
    def _state_kept(self) -> Iterator[None]:
        """Steps taken inside leave no trace: every saved variable, the mode and the
        compiled training step are restored on exit (as a checkpoint restores them)."""
        state, mode, train = self.state_dict(), self.mode, self._train_fn
        try:
            yield
        finally:
            self.load_state_dict(state)
            self.mode, self._train_fn = mode, train

    def _meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One meta-training step in the current mode; on several devices each trains its
        slice of the tasks (:mod:`metaplug_tensorflow.mirrored`)."""
        if self.backend.replicas is not None:
            self.check_batch(batch)
            extra = self.extra_train_inputs(batch)
            self.optimizer.schedule()
            return self.backend.replicas.train_step(self, batch, extra)
        e = self.episode_tensors(batch)
        extra = self.extra_train_inputs(batch)
        self.optimizer.schedule()
        self._first_task.assign(batch.first_task)
        # traced (once) as meta-training: the model may draw from the seed, the step variable
        # and the place of the batch's first task in the meta-batch (a worker's slice)
        seed, step = self.backend.seed_value, self.optimizer.steps
        with self.backend.scope(), self.precision.scope(), meta_training(seed, step, first_task=self._first_task):
            metrics = self._train_fn(e.support_x, e.support_y, e.query_x, e.query_y, *extra)
        return {k: float(v) for k, v in metrics.items()}

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        """Per-task ``loss``, ``loss_before`` and (classification) ``accuracy``; on several
        devices each evaluates its slice of the tasks."""
        replicas = self.backend.replicas
        if replicas is not None and batch.num_tasks >= replicas.count:
            self.check_batch(batch)
            steps = self.evaluation_steps(steps)
            extra = self.adaptation_inputs(batch.support_x.shape[0], batch.support_x.shape[1], steps)
            return replicas.evaluate(self, batch, steps, extra)
        e = self.episode_tensors(batch)
        steps = self.evaluation_steps(steps)
        extra = self.adaptation_inputs(batch.support_x.shape[0], batch.support_x.shape[1], steps)
        with self.backend.scope(), self.precision.scope():
            result = self._evaluate_fn(e.support_x, e.support_y, e.query_x, e.query_y, steps, *extra)
        return {k: v.numpy() for k, v in result.items()}

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Adapt to one task's support set (no task axis) with ``steps`` inner steps."""
        support_x, support_y = np.asarray(support_x), np.asarray(support_y)
        self._check_examples(support_x[None])
        steps = self.evaluation_steps(steps)
        x = self.backend.inputs(support_x[None], len(self.spec.input_shape))
        y = self.backend.targets(support_y[None], self.problem)
        extra = self.adaptation_inputs(1, support_x.shape[0], steps)
        with self.backend.scope(), self.precision.scope():
            state = self._adapt_fn(x, y, steps, *extra)
        return AdaptedModel(self, [tf.identity(w) for w in state])

    def state_dict(self) -> dict[str, np.ndarray]:
        """``model.*`` (layout of docs/models.md), the extra and registered variables, and
        ``optimizer.steps`` and ``optimizer.<slot>.<meta-parameter>``."""
        state = {name: to_shared(v.numpy()) for name, v in self._saved.items()}
        optimizer = self.optimizer.state_dict()
        state["optimizer.steps"] = optimizer.pop("steps")
        for slot, arrays in optimizer.items():
            for name, array in zip(self.trainables, arrays, strict=True):
                state[f"optimizer.{slot}.{name}"] = to_shared(array)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; names and shapes must match this algorithm's."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            detail = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else "",
                    f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
                    if unexpected
                    else "",
                )
                if part
            )
            raise ConfigError(f"state does not fit this {self.name}: {detail}")
        for name, reference in expected.items():
            if np.shape(state[name]) != reference.shape:
                raise ConfigError(f"state entry {name!r} has shape {np.shape(state[name])}, expected {reference.shape}")
        for name, variable in self._saved.items():
            variable.assign(to_native(np.asarray(state[name])).astype(variable.dtype.as_numpy_dtype))
        optimizer: dict[str, Any] = {"steps": state["optimizer.steps"]}
        for slot in self.optimizer.slots:
            optimizer[slot] = [to_native(np.asarray(state[f"optimizer.{slot}.{n}"])) for n in self.trainables]
        self.optimizer.load_state_dict(optimizer)

    def _check_examples(self, x: np.ndarray) -> None:
        if tuple(x.shape[2:]) != tuple(self.spec.input_shape):
            raise ConfigError(
                f"examples have shape {tuple(x.shape[2:])}, the task spec says {tuple(self.spec.input_shape)}"
            )


class AdaptedModel:
    """A model adapted to one task: what :meth:`MetaLearner.adapted_state` kept and the
    algorithm's compiled :meth:`~MetaLearner.predict_adapted` (or ``predict``, a compiled
    ``predict(state, x)``, for a model that is not the algorithm's adapted one)."""

    def __init__(self, algorithm: MetaLearner, state: Weights, predict: Callable[..., tf.Tensor] | None = None) -> None:
        self.algorithm, self.state = algorithm, state
        self.input_shape = tuple(algorithm.spec.input_shape)
        self.predict_fn = predict if predict is not None else algorithm._predict_fn
        self.is_weights = predict is not None or algorithm.adapts_weights

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs ``(N, out)`` for examples ``(N, *input_shape)`` (channels first)."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"examples have shape {tuple(x.shape[1:])}, expected {self.input_shape}")
        backend = self.algorithm.backend
        inputs = backend.inputs(x[None], len(self.input_shape))
        with backend.scope(), self.algorithm.precision.scope():
            outputs = self.predict_fn(self.state, inputs)
        return outputs.numpy()[0]

    def weights(self) -> dict[str, np.ndarray]:
        """The adapted weights by name, in the shared layout of docs/models.md."""
        if not self.is_weights:
            raise ConfigError("this algorithm's adapted model is not a set of weights (e.g. ProtoNets' prototypes)")
        names = self.algorithm.model.names
        return {name: to_shared(np.asarray(w)) for name, w in zip(names, self.state, strict=True)}

    def export(self, path: str | Path, format: str = "savedmodel", example: np.ndarray | None = None) -> Path:
        """Save as ``format`` (:data:`metaplug_tensorflow.export.FORMATS`: a TensorFlow
        SavedModel) serving predictions without metaplug (see
        :func:`metaplug_tensorflow.export.save_adapted`); ``example`` is not needed."""
        from metaplug_tensorflow.export import FORMATS, save_adapted

        if format not in FORMATS:
            raise ConfigError(f"the tensorflow backend exports {', '.join(FORMATS)}, not {format!r}")
        return save_adapted(self, path)

    def native_inputs(self, x: tf.Tensor) -> tf.Tensor:
        """Channel-first examples ``(N, *input_shape)`` as the model's inputs ``(1, N, ...)``."""
        if len(self.input_shape) == 3:
            x = tf.transpose(x, [0, 2, 3, 1])
        return tf.cast(x, self.algorithm.backend.dtype)[None]


__all__ = ["AdaptedModel", "MetaLearner", "Update", "Weights", "tile"]

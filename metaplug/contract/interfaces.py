"""Backend-neutral interfaces that plugin implementations satisfy.

The host talks to every implementation through these types only, so an
algorithm for one backend is a class with five methods (see :class:`Algorithm`).
Data crosses the boundary as numpy arrays; each backend converts them to its
own tensors.

Standard models and their weight layout (shared by every backend, so weights
move between backends as plain numpy arrays) are described in ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from metaplug.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Splits every task sampler accepts; their classes or tasks never overlap."""


@dataclass(frozen=True)
class TaskSpec:
    """What every episode of a sampler looks like (``sampler.spec``); the host builds the
    model from it and passes it to the algorithm as ``spec``, which sizes heads and checks
    batches against it.

    Example: Omniglot 5-way is ``TaskSpec("classification", (1, 28, 28), 5, num_classes=4400,
    default_model="conv4")``; the sinusoid is ``TaskSpec("regression", (1,), 1)``.
    """

    problem: str
    """``"regression"`` or ``"classification"`` (one of :data:`metaplug.contract.records.PROBLEMS`)."""
    input_shape: tuple[int, ...]
    """Shape of one example, channels first for images (``(1, 28, 28)``); batches add
    ``(T, N)`` in front."""
    output_size: int
    """Classification: ways per episode (labels are ``0..ways-1``). Regression: outputs per
    example (targets are ``(..., output_size)``)."""
    num_classes: int | None = None
    """Classification: number of classes in the split (for transfer baselines that train a
    head over all of them); ``None`` for regression."""
    default_model: str = "mlp"
    """Standard model that suits these inputs (``"mlp"`` or ``"conv4"``), used when the
    configuration names none."""

    def check_output_shape(self, shape: tuple[int, ...]) -> None:
        """Raise a :class:`~metaplug.errors.ConfigError` unless ``shape``, a model's output for
        a batch of examples, is ``(examples, output_size)``: one line with both shapes.
        Backends check every model this way before training."""
        examples = shape[0] if shape else 0
        if tuple(shape) == (examples, self.output_size):
            return
        need = (
            f"{self.output_size} logits per example ({self.output_size}-way)"
            if self.problem == "classification"
            else f"{self.output_size} output(s) per example (the regression targets)"
        )
        raise ConfigError(
            f"the model's output has shape {tuple(shape)} for {examples} examples of shape {tuple(self.input_shape)}; "
            f"the tasks need ({examples}, {self.output_size}): {need}"
        )


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of ``T`` episodes (tasks), stacked so backends can vectorize over them.

    Shapes: ``support_x`` is ``(T, S, *input_shape)`` float32 and ``query_x``
    ``(T, Q, *input_shape)``. Classification labels are int64 ``(T, S)`` and
    ``(T, Q)`` in ``0..ways-1``; regression targets are float32
    ``(T, S, output_size)`` and ``(T, Q, output_size)``.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    problem: str
    classes: np.ndarray | None = None
    """Classification: ``(T, ways)`` split-wide class ids behind labels ``0..ways-1``."""
    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Regression: the true task parameters, e.g. ``amplitude`` and ``phase``, each ``(T,)``."""
    first_task: int = 0
    """The place of this batch's first task in the meta-batch it was cut from (a worker's
    slice, :func:`metaplug.contract.distributed.shard`): a model's training-time randomness
    (DropBlock) is drawn by a task's place in the whole meta-batch, so that the workers
    together draw what one process draws."""

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def task(self, index: int) -> EpisodeBatch:
        """Episode ``index`` as a batch of one (``T == 1``)."""
        s = slice(index, index + 1)
        return EpisodeBatch(
            self.support_x[s],
            self.support_y[s],
            self.query_x[s],
            self.query_y[s],
            self.problem,
            None if self.classes is None else self.classes[s],
            {k: v[s] for k, v in self.params.items()},
        )


@dataclass(frozen=True)
class ModelSpec:
    """A model to build: for :meth:`ModelBuilder.build` and :meth:`Backend.build_model`."""

    name: str
    """A registered model (``metaplug list models``): ``"mlp"`` (sinusoid: 1-40-40-1),
    ``"conv4"`` (Omniglot), ``"resnet12"``, or a plugin's."""
    input_shape: tuple[int, ...]
    output_size: int
    options: Mapping[str, Any] = field(default_factory=dict)
    """Model options, as the model's ``Options`` declares them: ``hidden`` for the MLP;
    ``filters``, ``pooling`` (``"max"`` or ``"stride"``) for conv4; ``channels``, ``leak``
    for resnet12 (:mod:`metaplug.contract.hyperparameters`)."""


@runtime_checkable
class ModelBuilder(Protocol):
    """A model registered with ``register_models``: one class per model and backend.

    The host never instantiates it; it validates the configuration's ``[model]`` table
    against the class's ``Options`` attribute (a :class:`metaplug.contract.options.Options`
    dataclass; the standard models' live in :mod:`metaplug.contract.hyperparameters`, so
    one configuration means the same on every backend), then calls::

        model = Builder.build(backend, spec)

    with the backend instance (its device, dtype, random generator) and a
    :class:`ModelSpec` whose ``options`` hold every option, defaults filled in. ``build``
    is a classmethod (or staticmethod) returning a freshly initialised model of the
    backend's own kind (a ``torch.nn.Module`` on torch, a
    ``metaplug_tensorflow.models.FunctionalModel`` on TensorFlow), initialised from the
    backend's seeded generators and placed on its device. It raises
    :class:`~metaplug.errors.ConfigError` with one line for inputs it cannot take (an
    image model given vectors). Example::

        class MyNet:
            Options = MyNetOptions

            @classmethod
            def build(cls, backend, spec):
                return MyModule(spec.input_shape, spec.output_size, **spec.options).to(backend.device)

    Standard models have ``features`` and ``head`` (see ``docs/models.md``).
    """

    Options: Any

    @classmethod
    def build(cls, backend: Any, spec: ModelSpec) -> Any:
        """A freshly initialised model for ``spec`` on ``backend``."""
        ...


@runtime_checkable
class TaskSampler(Protocol):
    """Produces batches of episodes as numpy arrays, reproducibly from a seed.

    Constructed as ``Sampler(split="train", seed=0, **options)`` where ``split``
    is one of :data:`SPLITS`, plus ``data_dir=`` (the root of local datasets, when the run
    sets ``data_dir``) if ``__init__`` accepts it; without it, look in
    ``$METAPLUG_DATA_DIR`` (:func:`metaplug.tasks.datasets.data_dir`). The options are
    declared in an ``Options`` class attribute (or are the other keyword parameters of
    ``__init__``). The same seed, split and options give the same episodes on every run
    and machine.
    """

    spec: TaskSpec

    def sample(self, num_tasks: int) -> EpisodeBatch:
        """Draw the next ``num_tasks`` episodes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (the random generator's), for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A tensor framework: converts arrays and episodes, builds the standard models.

    Constructed with no arguments, or with ``device=...`` (``"cpu"``, ``"cuda:1"``...)
    when the user picks a device; raise ``ConfigError`` for one it cannot use.

    Optional, for training on several workers: the classmethods ``join_workers`` and
    ``launch_workers`` of :mod:`metaplug.contract.distributed`.
    """

    name: str
    models: tuple[str, ...]
    """Names :meth:`build_model` accepts (the conformance suite checks them); the host
    builds models through the registry (``register_models``), not through this list."""
    batching_modes: tuple[str, ...]
    """The values of the standard algorithms' ``batching`` option that this backend runs
    (optional: without it, every value of :data:`metaplug.contract.hyperparameters.BATCHING`);
    the host rejects any other before building anything.

    Optional, for ``--init-weights``: ``weight_formats``, the file suffixes of the
    framework's weight files (``(".pt", ".pth", ".bin")``), and a static method
    ``read_weights(path[, model]) -> dict[str, np.ndarray]`` reading one into named arrays
    in the shared layout of ``docs/models.md`` (``model``, when it takes it, is the run's
    algorithm's ``model``, to name entries as that model does); the host asks the
    configured backend first, then the other installed ones (see
    :mod:`metaplug.experiment.weights`)."""

    export_formats: tuple[str, ...]
    """Formats its adapted models' ``export`` writes (optional; ``metaplug export`` offers
    these, plus ``safetensors``, which the host writes from ``AdaptedModel.weights``)."""

    def seed(self, seed: int) -> None:
        """Seed the framework's random generators (model initialisation, dropout)."""
        ...

    def tensor(self, array: np.ndarray, dtype: Any = None) -> Any:
        """``array`` as one of the framework's tensors on the backend's device, unchanged in
        layout; floating arrays become ``dtype`` (default: the backend's float type),
        integer arrays stay integers. ``np.asarray`` of the result gives the values back."""
        ...

    def to_tensors(self, batch: EpisodeBatch) -> Any:
        """The batch as the framework's tensors on the backend's device (an ``Episodes``
        with ``support_x``, ``support_y``, ``query_x``, ``query_y``; the backend may move
        image channels to its own layout)."""
        ...

    def build_model(self, spec: ModelSpec) -> Any:
        """A freshly initialised standard model, for algorithms and tests that build one
        without the host; a backend plugin implements it with the same
        :class:`ModelBuilder` classes it registers, so both give the same model."""
        ...


@runtime_checkable
class OptimizerFactory(Protocol):
    """Builds an outer optimizer: ``factory(params, lr=1e-3, **options)``.

    ``params`` and the returned optimizer are the backend's own types (for
    example a list of ``torch.nn.Parameter`` and a ``torch.optim.Optimizer``).
    The registered implementation declares its options in an ``Options`` class
    attribute (:class:`metaplug.contract.options.Options`); the host passes the bound
    factory to the algorithm as ``optimizer=``.
    """

    def __call__(self, params: Any, *, lr: float, **options: Any) -> Any: ...


@runtime_checkable
class InnerRule(Protocol):
    """An inner-loop update rule (an optimizer registered with ``role="inner"``): how an
    algorithm's inner loop turns gradients into adapted parameters. The same contract on
    every backend.

    A rule is a class constructed with no arguments; the host instantiates the one the
    configuration names (``algorithm.inner_rule``) and passes it to the algorithm as
    ``rule=``. Every mapping is keyed by parameter name (the layout names of
    ``docs/models.md``, such as ``head.weight``) and holds the backend's tensors:

    - ``init(params, lr)`` is called once, with the meta-parameters the inner loop adapts
      and the algorithm's ``inner_lr``; it returns the rule's own meta-learned tensors by
      parameter name (Meta-SGD: one rate per entry), or ``{}``. The algorithm trains them
      with the outer optimizer and saves them as ``inner.<parameter name>``.
    - ``step(params, grads, learnables, lr)`` returns every parameter of ``params`` after
      one inner step, given the gradients of the support loss (same names and shapes),
      the tensors ``init`` returned and ``inner_lr`` (a float, or a scalar tensor when an
      algorithm learns the rate: MAML++ steps each parameter with its own).

    A rule with per-task state (moments) implements :class:`StatefulInnerRule` as well.

    ``step`` must be a pure function of its inputs: no in-place updates, no randomness, no
    Python side effects and no conversion to numpy. Algorithms differentiate through it
    (second-order MAML) and run it under ``torch.func.vmap`` or inside ``tf.function``.
    On TensorFlow, ``params`` and ``grads`` may carry a leading task axis that the
    learnables lack: broadcast them (``p - a * g`` does).

    Example::

        class InnerSignSGD:
            def init(self, params, lr):
                return {}
            def step(self, params, grads, learnables, lr):
                return {n: p - lr * sign(grads[n]) for n, p in params.items()}

    with ``sign`` the framework's (``torch.sign``, ``tf.sign``).
    """

    def init(self, params: Mapping[str, Any], lr: float) -> dict[str, Any]:
        """The rule's meta-learned tensors by parameter name (``{}``: none)."""
        ...

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], learnables: Mapping[str, Any], lr: float
    ) -> dict[str, Any]:
        """Every parameter after one inner step, by name."""
        ...


@runtime_checkable
class StatefulInnerRule(InnerRule, Protocol):
    """An inner rule with per-task state (Adam's and RMSprop's moments): an
    :class:`InnerRule` with two more methods, which inner loops call instead of ``step``.

    - ``init_state(params)`` returns the state at the start of one task's adaptation,
      keyed by parameter name (each value whatever the rule needs for that parameter: a
      tuple of tensors, a step count...). Inner loops call it afresh for every task and
      every adaptation, so nothing carries over from one task to the next.
    - ``step_with_state(params, grads, learnables, lr, state)`` returns the parameters after
      one inner step and the new state, both keyed by name. It is pure like ``step`` and
      differentiated through, moments included (second-order MAML).

    Keying the state by parameter name lets an algorithm step parameters one at a time
    with their own rate (MAML++'s per-layer rates pass ``{name: param}`` mappings and a
    scalar tensor ``lr``). ``step`` is one step from a fresh state. Algorithms go through
    :func:`initial_state` and :func:`apply_rule`, which handle both kinds of rule.
    """

    def init_state(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The state before the first inner step, by parameter name."""
        ...

    def step_with_state(
        self,
        params: Mapping[str, Any],
        grads: Mapping[str, Any],
        learnables: Mapping[str, Any],
        lr: Any,
        state: Mapping[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every parameter after one inner step, and the new state, by name."""
        ...


def is_stateful(rule: InnerRule) -> bool:
    """Whether ``rule`` keeps per-task state (implements :class:`StatefulInnerRule`)."""
    return callable(getattr(rule, "init_state", None)) and callable(getattr(rule, "step_with_state", None))


def initial_state(rule: InnerRule, params: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh per-task state for ``rule`` on ``params`` (``{}`` for a stateless rule)."""
    return rule.init_state(params) if is_stateful(rule) else {}  # type: ignore[attr-defined]


def apply_rule(
    rule: InnerRule,
    params: Mapping[str, Any],
    grads: Mapping[str, Any],
    learnables: Mapping[str, Any],
    lr: Any,
    state: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One inner step of ``rule``: ``(new params, new state)``, the state threaded through
    for a :class:`StatefulInnerRule` and ``{}`` for a stateless one."""
    if is_stateful(rule):
        return rule.step_with_state(params, grads, learnables, lr, state)  # type: ignore[attr-defined]
    return rule.step(params, grads, learnables, lr), {}


def resolve_inner_rule(
    rule: InnerRule | None,
    name: str | None,
    builtin: Mapping[str, type[InnerRule]],
    plain: type[InnerRule],
    algorithm: str,
    plugin: str,
) -> InnerRule:
    """The inner rule an algorithm uses, for backend plugins' base classes.

    ``name`` is the algorithm's ``inner_rule`` option (``None``: it has no such option and
    its inner loop is ``plain()``, plain gradient descent); ``rule`` is what the host passed
    as ``rule=``; without it (an algorithm built directly in Python) the rule comes from
    ``builtin``, the rules of the plugin (a distribution name, for messages) by name.
    """
    if name is None:
        if rule is not None:
            raise ConfigError(f"{algorithm} has no inner_rule option; it takes no rule=")
        return plain()
    if rule is None:
        if name not in builtin:
            raise ConfigError(
                f"inner_rule {name!r} is not built into {plugin} ({', '.join(builtin)}); pass rule=<the rule "
                f"instance>, or run through metaplug, which loads registered rules"
            )
        return builtin[name]()
    if not isinstance(rule, InnerRule):
        raise ConfigError(
            f"rule must implement init() and step() (metaplug.contract.interfaces.InnerRule), got {type(rule).__name__}"
        )
    if callable(getattr(rule, "init_state", None)) != callable(getattr(rule, "step_with_state", None)):
        raise ConfigError(
            f"rule {type(rule).__name__} must implement both init_state() and step_with_state() or neither "
            f"(metaplug.contract.interfaces.StatefulInnerRule)"
        )
    return rule


@runtime_checkable
class AdaptedModel(Protocol):
    """A model adapted to one task (``Algorithm.adapt``), or the meta-learned model itself
    (``Algorithm.initial_model``, optional).

    Optional, for ``metaplug export``: ``weights()``, the adapted weights by name in the
    shared layout of docs/models.md (a :class:`~metaplug.errors.ConfigError` when the
    adaptation is not weights), and ``export(path, format, example)``, which writes the
    model in one of ``Backend.export_formats`` (traced on ``example``, a batch of inputs)
    so that it predicts without metaplug installed, and returns the path written.
    """

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for ``x`` of shape ``(N, *input_shape)``: regression values
        ``(N, output_size)`` or class scores ``(N, ways)``."""
        ...


@runtime_checkable
class Algorithm(Protocol):
    """A meta-learning algorithm for one backend.

    Constructed by the host as::

        Algorithm(backend=backend, model=model, spec=task_spec, optimizer=factory,
                  [rule=inner_rule,] **options)

    where ``model`` comes from ``backend.build_model`` (or the user),
    ``optimizer`` is an :class:`OptimizerFactory` with its learning rate and options
    bound, and ``options`` are the configuration's ``[algorithm]`` values. The class
    declares them in its ``Options`` attribute (a :class:`metaplug.contract.options.Options`
    dataclass: what ``metaplug info`` shows and the host validates); without one, the
    keyword parameters of ``__init__`` are the options. When the options have an
    ``inner_rule`` (a name), the host resolves it to an :class:`InnerRule` instance of the
    same backend and passes it as ``rule``. An algorithm that cannot handle
    ``spec.problem`` raises :class:`metaplug.errors.ConfigError`.

    Optional, for a ``batching`` option with ``"auto"``: ``settle_batching(batch, why="")``
    fixes the concrete mode once and returns a
    :class:`~metaplug.contract.calibration.BatchingChoice` (measured on ``batch`` through
    :func:`metaplug.contract.calibration.choose`, or the backend's rule when ``batch`` is
    ``None``); the host writes its ``mode`` into the run's configuration, so that resuming
    runs the same mode. Both backend plugins' base classes implement it.
    """

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update on a batch of episodes; returns mean metrics
        (``loss``, plus ``accuracy`` for classification) of the query sets."""
        ...

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Adapt to one task's support set (no leading task axis); ``steps``
        overrides the test-time number of inner steps."""
        ...

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        """Adapt to each episode's support set and score its query set.

        Returns per-task arrays of shape ``(T,)``: ``loss`` (after adaptation),
        ``loss_before`` (before adaptation, where that is defined) and, for
        classification, ``accuracy`` in ``[0, 1]``.
        """
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to continue training, as named numpy arrays:
        model weights under ``model.<name>``, the rest under other prefixes.
        The arrays are copies: training on afterwards must not change them."""
        ...

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a :meth:`state_dict`; predictions afterwards are identical."""
        ...

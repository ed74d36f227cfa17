"""Checking a configuration against the installed plugins, and building its components."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metaplug.contract.calibration import BatchingChoice
from metaplug.contract.interfaces import EpisodeBatch, InnerRule, ModelSpec, TaskSampler, TaskSpec
from metaplug.contract.options import OptionInfo, checked, options_of
from metaplug.contract.records import Component
from metaplug.errors import (
    BackendNotSupportedError,
    ConfigError,
    MetaplugError,
    PluginError,
    UnknownComponentError,
    suggest,
)
from metaplug.experiment import weights
from metaplug.experiment.config import PREFERRED_BACKENDS, Choice, ExperimentConfig, TrainSettings
from metaplug.experiment.factories import build_with_factory, is_factory, load_factory
from metaplug.plugins.discovery import registry as default_registry
from metaplug.plugins.registry import Registry

HOST_ARGUMENTS: dict[str, set[str]] = {
    "backends": {"self", "device"},
    "task-samplers": {"self", "split", "seed", "data_dir"},
    "algorithms": {"self", "backend", "model", "spec", "optimizer", "rule"},
    "optimizers": {"self", "params", "lr"},
    "models": {"self", "backend", "spec"},
    "observers": {"self"},
}
"""Constructor arguments the host passes itself, by component kind; the others are options."""


@dataclass(frozen=True)
class Records:
    """The registry records a configuration names."""

    backend: Component
    tasks: Component
    algorithm: Component
    optimizer: Component


def choose_backend(reg: Registry) -> str:
    """The first installed backend: torch, then tensorflow, then alphabetical."""
    names = reg.names("backends")
    if not names:
        raise ConfigError(
            "no backend is installed; install one, e.g. pip install metaplug-torch (see 'metaplug plugins')"
        )
    preferred = [n for n in PREFERRED_BACKENDS if n in names]
    return (preferred or names)[0]


def check(cfg: ExperimentConfig, reg: Registry | None = None, observers: bool = True) -> ExperimentConfig:
    """Validate names, compatibility and options against the registry, without building anything
    (the run observers' names too, unless ``observers`` is false: scoring a run needs none).

    Returns the configuration with the backend chosen and every scalar option default filled
    in, so that the saved configuration states every hyper-parameter.
    """
    reg = reg or default_registry()
    if cfg.data_dir is not None:
        data_dir = Path(cfg.data_dir).expanduser()
        if not data_dir.is_dir():
            raise ConfigError(f"data directory {cfg.data_dir} does not exist")
        cfg = replace(cfg, data_dir=str(data_dir.resolve()))
    backend = cfg.backend or choose_backend(reg)
    records = lookup(replace(cfg, backend=backend), reg)
    problem = records.tasks.problems[0]
    if problem not in records.algorithm.problems:
        raise ConfigError(
            f"algorithm {cfg.algorithm.name!r} does not support {problem} tasks ({cfg.tasks.name!r}); "
            f"it supports {', '.join(records.algorithm.problems)}"
        )
    if records.optimizer.role != "outer":
        outer = [
            n
            for n in reg.names("optimizers")
            if any(r.role == "outer" and backend in r.backends for r in reg.records("optimizers", n))
        ]
        raise ConfigError(
            f"optimizer {cfg.optimizer.name!r} is an inner-loop rule, not an outer optimizer; "
            f"choose one of: {', '.join(outer)}"
        )
    tasks = resolve_options(cfg.tasks, records.tasks, "tasks")
    _check_episode_shape(cfg, tasks)
    algorithm = resolve_options(cfg.algorithm, records.algorithm, "algorithm")
    optimizer = resolve_options(cfg.optimizer, records.optimizer, "optimizer")
    _check_batching(algorithm, records.backend)
    rule = algorithm.options.get("inner_rule")
    if isinstance(rule, str):
        inner_rule_record(reg, rule, backend)
    if cfg.init_weights is not None:
        source = weights.check_source(cfg.init_weights, weights.backend_classes(reg, backend))
        cfg = replace(cfg, init_weights=str(source))
    model = cfg.model  # without a name, the sampler's default model: checked when it is built
    if model.name is not None and is_factory(model.name):
        load_factory(model.name)  # importable and callable; its options go to it unchecked
    elif model.name is not None:
        model = resolve_options(model, model_record(reg, model.name, backend), "model")
    twice = sorted({name for name in cfg.train.observers if cfg.train.observers.count(name) > 1})
    if twice:
        raise ConfigError(f"train.observers names {twice[0]!r} twice; name each observer once")
    for name in cfg.train.observers if observers else ():
        reg.get("observers", name)
    train = resolve_monitor(cfg.train, problem)
    return replace(
        cfg, backend=backend, tasks=tasks, algorithm=algorithm, optimizer=optimizer, model=model, train=train
    )


def resolve_monitor(train: TrainSettings, problem: str) -> TrainSettings:
    """``train`` with ``monitor`` and ``monitor_mode`` resolved from ``auto`` (accuracy, to
    maximise, for classification; loss, to minimise, otherwise) and checked against ``problem``."""
    monitor = train.monitor
    if monitor == "auto":
        monitor = "accuracy" if problem == "classification" else "loss"
    elif monitor == "accuracy" and problem != "classification":
        raise ConfigError(f"train.monitor 'accuracy' needs classification tasks; these are {problem}: use 'loss'")
    mode = train.monitor_mode
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    if train.patience and not train.val_every:
        raise ConfigError(
            f"train.patience {train.patience} needs validation: set train.val_every (--val-every N) above 0"
        )
    return replace(train, monitor=monitor, monitor_mode=mode)


def _check_batching(algorithm: Choice, backend: Component) -> None:
    """``algorithm.batching`` must be a mode the backend runs (its ``batching_modes``)."""
    batching = algorithm.options.get("batching")
    modes = getattr(backend.load(), "batching_modes", None)
    if isinstance(batching, str) and modes is not None and batching not in modes:
        raise ConfigError(
            f"algorithm.batching {batching!r} is not available on backend {backend.name!r}; it runs {', '.join(modes)}"
        )


def _check_episode_shape(cfg: ExperimentConfig, tasks: Choice) -> None:
    """``[evaluation]`` ways/shots/queries must be options of the tasks; ways at most the training ways."""
    for key, value in cfg.evaluation.episode_shape().items():
        if key not in tasks.options:
            raise ConfigError(f"evaluation.{key}: task sampler {tasks.name!r} has no option {key!r}")
        if key == "ways" and value > tasks.options[key]:
            raise ConfigError(
                f"evaluation.ways ({value}) must be at most tasks.ways ({tasks.options[key]}): "
                "the model is built for the training ways"
            )


def lookup(cfg: ExperimentConfig, reg: Registry) -> Records:
    """The records behind the configured names (unknown names raise errors with suggestions)."""
    assert cfg.backend is not None
    assert cfg.tasks.name and cfg.algorithm.name and cfg.optimizer.name  # required by from_dict
    return Records(
        backend=reg.get("backends", cfg.backend),
        tasks=reg.get("task-samplers", cfg.tasks.name),
        algorithm=reg.get("algorithms", cfg.algorithm.name, backend=cfg.backend),
        optimizer=reg.get("optimizers", cfg.optimizer.name, backend=cfg.backend),
    )


def resolve_options(choice: Choice, record: Component, section: str) -> Choice:
    """``choice`` with its options validated against what the implementation declares and
    every scalar default filled in (so the saved configuration states every setting)."""
    implementation = record.load()
    owner = f"{record.kind[:-1].replace('-', ' ')} {record.name!r}"
    declared = options_of(implementation)
    if declared is not None:
        options = declared.parse(choice.options, owner, section).as_dict()
        return replace(choice, options={k: v for k, v in options.items() if v is not None})
    parameters = keyword_parameters(implementation, HOST_ARGUMENTS[record.kind])
    if parameters is None:  # accepts **kwargs: nothing to check against
        return choice
    for name, value in choice.options.items():
        if name not in parameters:
            accepted = ", ".join(parameters) or "no options"
            raise ConfigError(f"{owner} has no option {name!r}.{suggest(name, parameters)} It accepts: {accepted}")
        _check_type(f"{section}.{name}", value, parameters[name].default)
    options = {}
    for name, parameter in parameters.items():
        if name in choice.options:
            options[name] = _coerce(choice.options[name], parameter.default)
        elif isinstance(parameter.default, (bool, int, float, str)):
            options[name] = parameter.default
        elif parameter.default is inspect.Parameter.empty:
            raise ConfigError(f"{owner} needs option {name!r}")
    return replace(choice, options=options)


def describe_options(implementation: Any, kind: str) -> list[OptionInfo]:
    """The options of a component implementation, as ``metaplug info`` shows them: its
    declared :class:`~metaplug.contract.options.Options`, else its keyword parameters.
    Backends have none: the host constructs them with at most ``device=``."""
    if kind == "backends":
        return []
    declared = options_of(implementation)
    if declared is not None:
        return declared.describe()
    described = []
    for p in (keyword_parameters(implementation, HOST_ARGUMENTS[kind]) or {}).values():
        if p.annotation is inspect.Parameter.empty:
            annotation = "any"
        else:
            annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "any")
        required = p.default is inspect.Parameter.empty
        described.append(OptionInfo(p.name, annotation, None if required else p.default, required=required))
    return described


def inner_rule_record(reg: Registry, name: str, backend: str) -> Component:
    """The inner-loop rule registered as ``name`` for ``backend``; one line if there is none."""
    rules = sorted(
        n
        for n in reg.names("optimizers")
        if any(r.role == "inner" and backend in r.backends for r in reg.records("optimizers", n))
    )
    if name not in reg.names("optimizers"):
        raise ConfigError(
            f"algorithm.inner_rule {name!r} is unknown.{suggest(name, rules)} Inner rules for {backend}: "
            f"{', '.join(rules) or 'none'}"
        )
    try:
        record = reg.get("optimizers", name, backend=backend)
    except MetaplugError as exc:
        raise ConfigError(f"algorithm.inner_rule: {exc}") from None
    if record.role != "inner":
        raise ConfigError(
            f"algorithm.inner_rule {name!r} is an outer optimizer; inner rules for {backend}: {', '.join(rules)}"
        )
    return record


def load_inner_rule(reg: Registry, name: str, backend: str) -> InnerRule:
    """An instance of the inner rule ``name`` of ``backend``, checked against :class:`InnerRule`."""
    record = inner_rule_record(reg, name, backend)
    rule = record.load()()
    if not isinstance(rule, InnerRule):
        raise ConfigError(f"{record.describe()} does not implement init() and step() (see InnerRule)")
    return rule


def host_arguments(reg: Registry, implementation: Any, options: dict[str, Any], backend: str) -> dict[str, Any]:
    """``rule=`` for an algorithm whose declared options name an ``inner_rule``, else nothing."""
    declared = options_of(implementation)
    if declared is None or "inner_rule" not in declared.names():
        return {}
    default = next(f.default for f in dataclasses.fields(declared) if f.name == "inner_rule")
    name = options.get("inner_rule", default)
    return {"rule": load_inner_rule(reg, name, backend)}


def model_record(reg: Registry, name: str, backend: str) -> Component:
    """The model ``name`` registered for ``backend``; one line naming the models it has if none is."""
    available = sorted(n for n in reg.names("models") if backend in reg.backends_for("models", n))
    listing = f"Models for {backend}: {', '.join(available) or 'none (see metaplug plugins)'}"
    if name not in reg.names("models"):
        raise UnknownComponentError(f"unknown model {name!r}.{suggest(name, available)} {listing}")
    if name not in available:
        supported = ", ".join(reg.backends_for("models", name))
        raise BackendNotSupportedError(
            f"model {name!r} is not available for backend {backend!r}; it supports: {supported}. {listing}"
        )
    return reg.get("models", name, backend=backend)


def make_model(
    reg: Registry, backend: Any, backend_name: str, name: str, spec: TaskSpec, options: Mapping[str, Any]
) -> tuple[Any, Choice]:
    """The model ``name`` built through its registered :class:`~metaplug.contract.interfaces.ModelBuilder`
    for ``spec``'s inputs and outputs (or by the factory a ``module:function`` name names,
    see :mod:`metaplug.experiment.factories`), and the ``[model]`` choice with its options resolved."""
    if is_factory(name):
        return build_with_factory(name, spec, options), Choice(name, dict(options))
    record = model_record(reg, name, backend_name)
    choice = resolve_options(Choice(name, dict(options)), record, "model")
    builder = record.load()
    if not callable(getattr(builder, "build", None)):
        raise PluginError(f"{record.describe()} has no build(backend, spec) (see ModelBuilder)")
    model = builder.build(backend, ModelSpec(name, spec.input_shape, spec.output_size, dict(choice.options)))
    return model, choice


def make_backend(record: Component, device: str | None, devices: int = 1) -> Any:
    """The backend of ``record``, on ``device`` when one is given (a backend whose
    constructor takes no ``device`` cannot be placed; a device it refuses names the way out),
    over ``devices`` devices of this process when more than one (:func:`check_devices`)."""
    cls = record.load()
    check_devices(record, devices)
    arguments: dict[str, Any] = {"devices": devices} if devices > 1 else {}
    if device is None:
        return cls(**arguments)
    parameters = keyword_parameters(cls, set())
    if parameters is not None and "device" not in parameters:
        raise ConfigError(f"backend {record.name!r} takes no device; remove device = {device!r}")
    try:
        return cls(device=device, **arguments)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; to use another, pass --device, e.g. --device cpu") from None


def check_devices(record: Component, devices: int) -> None:
    """Several devices in one process need a backend constructor taking ``devices=``
    (TensorFlow's ``MirroredStrategy``); others run one device per process (torch, as
    PyTorch recommends: one worker per GPU)."""
    if checked("distributed.devices", devices, int, minimum=1) == 1:
        return
    parameters = keyword_parameters(record.load(), set())
    if parameters is not None and "devices" not in parameters:
        raise ConfigError(
            f"backend {record.name!r} drives one device per process (distributed.devices = {devices}); "
            f"run one worker per device instead: --nproc {devices}"
        )


def keyword_parameters(implementation: Any, skipped: set[str]) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of a class's ``__init__`` or a factory; ``None`` if it takes ``**kwargs``."""
    target = implementation.__init__ if inspect.isclass(implementation) else implementation
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    found = {}
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.name not in skipped and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            found[p.name] = p
    return found


def _check_type(where: str, value: Any, default: Any) -> None:
    """An undeclared option must have the type of its default (when that is a plain value)."""
    if value is None or default is None or isinstance(default, (tuple, list)):
        return
    if isinstance(default, (bool, int, float, str)):
        checked(where, value, type(default))


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


@dataclass
class Experiment:
    """A configuration's live components."""

    config: ExperimentConfig
    backend: Any
    algorithm: Any
    spec: TaskSpec
    train_sampler: TaskSampler
    records: Records
    init_weights: weights.WeightsReport | None = None
    """What loading ``[model] init_weights`` did (``None``: none configured, or a restored run)."""
    batching: BatchingChoice | None = None
    """The concrete batching mode the algorithm runs and how it was chosen (``None``: the
    algorithm has no ``batching`` option, or does not settle it)."""

    def sampler(self, split: str, seed: int | None = None) -> TaskSampler:
        """A fresh sampler of the configured tasks for ``split`` (``val`` or ``test``), with the
        episode shape of ``[evaluation]`` where it sets one."""
        options = {**self.config.tasks.options, **self.config.evaluation.episode_shape()}
        return make_sampler(self.records.tasks, self.config, split, self.config.seed if seed is None else seed, options)


def make_sampler(
    record: Component, cfg: ExperimentConfig, split: str, seed: int, options: dict[str, Any]
) -> TaskSampler:
    """The sampler of ``record`` for ``split``, given ``data_dir=`` when it takes it."""
    cls = record.load()
    extra = {"data_dir": cfg.data_dir} if cfg.data_dir is not None and _accepts(cls, "data_dir") else {}
    return cls(split=split, seed=seed, **extra, **options)


def _accepts(cls: Any, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def construct(
    reg: Registry, cls: Any, backend: Any, model: Any, spec: TaskSpec, optimizer: Any, options: Mapping[str, Any]
) -> Any:
    """``cls(backend=, model=, spec=, optimizer=, [rule=,] **options)``: an algorithm built as
    the host builds every algorithm (the inner rule its options name resolved to ``rule=``)."""
    arguments = host_arguments(reg, cls, dict(options), backend.name)
    return cls(backend=backend, model=model, spec=spec, optimizer=optimizer, **arguments, **options)


def algorithm(
    name: str,
    *,
    spec: TaskSpec,
    backend: str | None = None,
    model: Any = None,
    model_options: Mapping[str, Any] | None = None,
    optimizer: str = "adam",
    lr: float = 1e-3,
    optimizer_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str | None = None,
    devices: int = 1,
    **options: Any,
) -> Any:
    """The registered algorithm ``name``, ready to meta-train: the Python twin of ``metaplug
    train``'s building step (``metaplug.algorithm``).

    ``spec`` is the tasks' :class:`~metaplug.contract.interfaces.TaskSpec` (a sampler's
    ``spec``); ``backend`` a backend name (default: torch, then tensorflow); ``model`` your
    own framework model (a ``torch.nn.Module`` on torch), or the name of a standard model
    (default: ``spec.default_model``) built with ``model_options`` after seeding the backend
    with ``seed``; ``optimizer`` the outer optimizer at rate ``lr`` with ``optimizer_options``;
    ``options`` the algorithm's own (``inner_lr=0.4``...); ``devices`` > 1 trains each
    meta-batch split over that many devices of this process (TensorFlow's
    ``MirroredStrategy``; build it before anything else starts TensorFlow). Example::

        learner = metaplug.algorithm("maml", spec=sampler.spec, backend="torch", inner_lr=0.4)
        learner.meta_train_step(sampler.sample(32))
    """
    reg = default_registry()
    backend_name = backend or choose_backend(reg)
    instance = make_backend(reg.get("backends", backend_name), device, devices)
    instance.seed(seed)
    if model is None or isinstance(model, str):
        model, _ = make_model(reg, instance, backend_name, model or spec.default_model, spec, model_options or {})
    record = reg.get("optimizers", optimizer, backend=backend_name)
    if record.role != "outer":
        raise ConfigError(f"optimizer {optimizer!r} is an inner-loop rule, not an outer optimizer")
    factory = functools.partial(record.load(), lr=lr, **(optimizer_options or {}))
    cls = reg.load("algorithms", name, backend=backend_name)
    return construct(reg, cls, instance, model, spec, factory, options)


def build(
    cfg: ExperimentConfig, reg: Registry | None = None, initialise: bool = True, calibrate: bool = False
) -> Experiment:
    """Build the training sampler (first: its data is checked before a framework is imported),
    then seed the backend and build the model and the algorithm (in that order), and load
    ``[model] init_weights`` into it unless ``initialise`` is false (a restored run loads its
    checkpoint instead). Then settle ``algorithm.batching`` (:func:`settle_batching`):
    ``auto`` is measured when ``calibrate`` is true (a new run on one worker), else the
    backend's rule; the returned configuration names the concrete mode."""
    reg = reg or default_registry()
    records = lookup(cfg, reg)
    sampler = make_sampler(records.tasks, cfg, "train", cfg.seed, cfg.tasks.options)
    backend = make_backend(records.backend, cfg.device, cfg.distributed.devices)
    backend.seed(cfg.seed)
    spec: TaskSpec = sampler.spec
    assert cfg.backend is not None
    model_name = cfg.model.name or spec.default_model
    model, model_choice = make_model(reg, backend, cfg.backend, model_name, spec, cfg.model.options)
    factory = functools.partial(records.optimizer.load(), lr=cfg.lr, **cfg.optimizer.options)
    algorithm = construct(reg, records.algorithm.load(), backend, model, spec, factory, cfg.algorithm.options)
    cfg = replace(cfg, model=model_choice)
    report = None
    if initialise and cfg.init_weights is not None:
        classes = weights.backend_classes(reg, cfg.backend)
        report = weights.load(algorithm, cfg.init_weights, cfg.init_weights_strict, classes)
    experiment = Experiment(cfg, backend, algorithm, spec, sampler, records, report)
    settle_batching(experiment, calibrate)
    return experiment


def settle_batching(experiment: Experiment, calibrate: bool) -> BatchingChoice | None:
    """Fix the concrete mode of ``algorithm.batching`` (the algorithm's ``settle_batching``,
    :mod:`metaplug.contract.calibration`) and write it into ``experiment.config``, so that the
    saved ``config.toml`` names it and a resumed or evaluated run runs the same mode. With
    ``calibrate``, ``auto`` is measured on one meta-batch drawn from the training sampler,
    whose state is then put back (the run draws the same batches as without it)."""
    algorithm, cfg = experiment.algorithm, experiment.config
    settle = getattr(algorithm, "settle_batching", None)
    if not callable(settle) or "batching" not in cfg.algorithm.options:
        return None
    auto = cfg.algorithm.options["batching"] == "auto"
    batch = peek_batch(experiment.train_sampler, cfg.train.meta_batch_size) if calibrate and auto else None
    choice = settle(batch, why="" if calibrate else "not measured: resumed, evaluated or on several workers")
    if not isinstance(choice, BatchingChoice):
        return None
    options = {**cfg.algorithm.options, "batching": choice.mode}
    experiment.config = replace(cfg, algorithm=replace(cfg.algorithm, options=options))
    experiment.batching = choice
    return choice


def peek_batch(sampler: TaskSampler, num_tasks: int) -> EpisodeBatch:
    """A meta-batch of ``sampler``, which is then put back where it was (its ``state_dict``)."""
    state = copy.deepcopy(sampler.state_dict())
    try:
        return sampler.sample(num_tasks)
    finally:
        sampler.load_state_dict(state)

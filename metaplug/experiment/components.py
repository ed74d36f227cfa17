"""Checking a configuration against the installed plugins, and building its components."""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metaplug.errors import ConfigError, suggest
from metaplug.experiment.config import PREFERRED_BACKENDS, Choice, ExperimentConfig
from metaplug.contract.interfaces import ModelSpec, TaskSampler, TaskSpec
from metaplug.plugins.discovery import registry as default_registry
from metaplug.contract.records import Component
from metaplug.plugins.registry import Registry

CONSTRUCTOR_ARGUMENTS = {
    "task-samplers": {"self", "split", "seed"},
    "algorithms": {"self", "backend", "model", "spec", "optimizer"},
    "optimizers": {"self", "params", "lr"},
}
"""Parameters the runner passes itself; every other keyword is a user option."""


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
        raise ConfigError("no backend is installed; install one, e.g. pip install metaplug-torch "
                          "(see 'metaplug plugins')")
    preferred = [n for n in PREFERRED_BACKENDS if n in names]
    return (preferred or names)[0]


def check(cfg: ExperimentConfig, reg: Registry | None = None) -> ExperimentConfig:
    """Validate names, compatibility and options against the registry, without building anything.

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
        outer = [n for n in reg.names("optimizers")
                 if any(r.role == "outer" and backend in r.backends for r in reg.records("optimizers", n))]
        raise ConfigError(f"optimizer {cfg.optimizer.name!r} is an inner-loop rule, not an outer optimizer; "
                          f"choose one of: {', '.join(outer)}")
    tasks = _with_defaults(cfg.tasks, records.tasks, "task-samplers")
    _check_episode_shape(cfg, tasks)
    algorithm = _with_defaults(cfg.algorithm, records.algorithm, "algorithms")
    optimizer = _with_defaults(cfg.optimizer, records.optimizer, "optimizers")
    rule = algorithm.options.get("inner_rule")
    if isinstance(rule, str):
        inner = reg.get("optimizers", rule, backend=backend)
        if inner.role != "inner":
            raise ConfigError(f"algorithm.inner_rule {rule!r} is an outer optimizer; choose an inner-loop rule")
    return replace(cfg, backend=backend, tasks=tasks, algorithm=algorithm, optimizer=optimizer)


def _check_episode_shape(cfg: ExperimentConfig, tasks: Choice) -> None:
    """``[evaluation]`` ways/shots/queries must be options of the tasks; ways at most the training ways."""
    for key, value in cfg.evaluation.episode_shape().items():
        if key not in tasks.options:
            raise ConfigError(f"evaluation.{key}: task sampler {tasks.name!r} has no option {key!r}")
        if key == "ways" and value > tasks.options[key]:
            raise ConfigError(f"evaluation.ways ({value}) must be at most tasks.ways ({tasks.options[key]}): "
                              "the model is built for the training ways")


def lookup(cfg: ExperimentConfig, reg: Registry) -> Records:
    """The records behind the configured names (unknown names raise errors with suggestions)."""
    assert cfg.backend is not None
    return Records(
        backend=reg.get("backends", cfg.backend),
        tasks=reg.get("task-samplers", cfg.tasks.name),
        algorithm=reg.get("algorithms", cfg.algorithm.name, backend=cfg.backend),
        optimizer=reg.get("optimizers", cfg.optimizer.name, backend=cfg.backend),
    )


def _with_defaults(choice: Choice, record: Component, kind: str) -> Choice:
    """Check ``choice.options`` against the implementation's keyword parameters; add scalar defaults."""
    implementation = record.load()
    parameters = keyword_parameters(implementation, CONSTRUCTOR_ARGUMENTS[kind])
    what = f"{kind[:-1].replace('-', ' ')} {record.name!r}"
    if parameters is None:  # accepts **kwargs: nothing to check against
        return choice
    for name, value in choice.options.items():
        if name not in parameters:
            accepted = ", ".join(parameters) or "no options"
            raise ConfigError(f"{what} has no option {name!r}.{suggest(name, parameters)} It accepts: {accepted}")
        _check_type(f"{what} option {name!r}", value, parameters[name].default)
    options = {}
    for name, parameter in parameters.items():
        if name in choice.options:
            options[name] = _coerce(choice.options[name], parameter.default)
        elif isinstance(parameter.default, (bool, int, float, str)):
            options[name] = parameter.default
        elif parameter.default is inspect.Parameter.empty:
            raise ConfigError(f"{what} needs option {name!r}")
    return replace(choice, options=options)


def make_backend(record: Component, device: str | None) -> Any:
    """The backend of ``record``, on ``device`` when one is given (a backend whose
    constructor takes no ``device`` cannot be placed; a device it refuses names the way out)."""
    cls = record.load()
    if device is None:
        return cls()
    parameters = keyword_parameters(cls, set())
    if parameters is not None and "device" not in parameters:
        raise ConfigError(f"backend {record.name!r} takes no device; remove device = {device!r}")
    try:
        return cls(device=device)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; to use another, pass --device, e.g. --device cpu") from None


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
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where} must be like its default {default!r}, got {value!r}")


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

    def sampler(self, split: str, seed: int | None = None) -> TaskSampler:
        """A fresh sampler of the configured tasks for ``split`` (``val`` or ``test``), with the
        episode shape of ``[evaluation]`` where it sets one."""
        cls = self.records.tasks.load()
        options = {**self.config.tasks.options, **self.config.evaluation.episode_shape()}
        return cls(split=split, seed=self.config.seed if seed is None else seed, **options)


def build(cfg: ExperimentConfig, reg: Registry | None = None) -> Experiment:
    """Seed the backend, then build the training sampler, the model and the algorithm (in that order)."""
    reg = reg or default_registry()
    records = lookup(cfg, reg)
    if cfg.data_dir is not None:
        os.environ["METAPLUG_DATA_DIR"] = str(Path(cfg.data_dir).expanduser())
    backend = make_backend(records.backend, cfg.device)
    backend.seed(cfg.seed)
    sampler = records.tasks.load()(split="train", seed=cfg.seed, **cfg.tasks.options)
    spec: TaskSpec = sampler.spec
    model_name = cfg.model.name or spec.default_model
    models = tuple(getattr(backend, "models", ()))
    if models and model_name not in models:
        raise ConfigError(f"backend {cfg.backend!r} has no model {model_name!r}.{suggest(model_name, models)} "
                          f"It builds: {', '.join(models)}")
    model = backend.build_model(ModelSpec(model_name, spec.input_shape, spec.output_size, dict(cfg.model.options)))
    factory = functools.partial(records.optimizer.load(), lr=cfg.lr, **cfg.optimizer.options)
    algorithm = records.algorithm.load()(
        backend=backend, model=model, spec=spec, optimizer=factory, **cfg.algorithm.options
    )
    cfg = replace(cfg, model=replace(cfg.model, name=model_name))
    return Experiment(cfg, backend, algorithm, spec, sampler, records)

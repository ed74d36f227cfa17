"""Experiment configuration: defaults, a TOML file, then command-line overrides, validated.

The configuration is a TOML document::

    backend = "torch"          # default: torch, then tensorflow, then alphabetical
    device = "cpu"             # default: the backend's choice (a GPU when one is visible)
    seed = 0

    [tasks]                    # a task sampler and its options
    name = "sinusoid"
    shots = 10

    [algorithm]                # an algorithm and its hyper-parameters
    name = "maml"
    inner_lr = 0.01

    [optimizer]                # the outer optimizer
    name = "adam"
    lr = 0.001

    [train]
    iterations = 10000

See ``docs/user-guide.md`` for every key. In ``tasks``, ``model``, ``algorithm`` and
``optimizer`` every key except ``name`` (and the optimizer's ``lr``, the model's
``init_weights`` and ``init_weights_strict``) is passed to the component as a keyword
argument.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metaplug.contract.options import checked
from metaplug.errors import ConfigError, suggest
from metaplug.experiment.tomlio import dumps, parse_value, read_toml

COMPONENT_SECTIONS = ("tasks", "model", "algorithm", "optimizer")
"""Sections naming a component; their other keys are the component's options."""

PREFERRED_BACKENDS = ("torch", "tensorflow")

MAX_SEED = 2**64 - 1
"""Seeds are unsigned 64-bit integers (what every backend's generator accepts)."""

DEFAULTS: dict[str, Any] = {
    "backend": None,
    "device": None,
    "seed": 0,
    "data_dir": None,
    "tasks": {"name": "sinusoid"},
    "model": {"name": None, "init_weights": None, "init_weights_strict": True},
    "algorithm": {"name": "maml"},
    "optimizer": {"name": "adam", "lr": 0.001},
    "train": {
        "iterations": 10000,
        "meta_batch_size": 25,
        "log_every": 20,
        "val_every": 500,
        "val_tasks": 100,
        "checkpoint_every": 1000,
        "test_tasks": 100,
        "monitor": "auto",
        "monitor_mode": "auto",
        "patience": 0,
        "min_delta": 0.0,
        "observers": ["jsonl"],
        "prefetch": 2,
        "data_workers": 1,
    },
    "evaluation": {"episodes": 600, "steps": None, "ways": None, "shots": None, "queries": None},
    "distributed": {"workers": 1, "devices": 1, "threads": None, "timeout_s": 300.0},
}
"""The default job: sinusoid regression with MAML, about a minute on a laptop CPU."""


@dataclass(frozen=True)
class Setting:
    """The type and range a fixed setting accepts (checked like component options)."""

    kind: Any
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    choices: tuple[Any, ...] = ()

    def check(self, where: str, value: Any) -> Any:
        return checked(
            where,
            value,
            self.kind,
            minimum=self.minimum,
            maximum=self.maximum,
            exclusive=self.exclusive,
            choices=self.choices,
        )


SETTINGS: dict[str, Setting] = {
    "backend": Setting(str | None),
    "device": Setting(str | None),
    "seed": Setting(int, 0, maximum=MAX_SEED),
    "data_dir": Setting(str | None),
    "tasks.name": Setting(str),
    "model.name": Setting(str | None),
    "model.init_weights": Setting(str | None),
    "model.init_weights_strict": Setting(bool),
    "algorithm.name": Setting(str),
    "optimizer.name": Setting(str),
    "optimizer.lr": Setting(float, 0, exclusive=True),
    "train.iterations": Setting(int, 1),
    "train.meta_batch_size": Setting(int, 1),
    "train.log_every": Setting(int, 1),
    "train.val_every": Setting(int, 0),
    "train.val_tasks": Setting(int, 1),
    "train.checkpoint_every": Setting(int, 0),
    "train.test_tasks": Setting(int, 0),
    "train.monitor": Setting(str),
    "train.monitor_mode": Setting(str, choices=("auto", "min", "max")),
    "train.patience": Setting(int, 0),
    "train.min_delta": Setting(float, 0),
    "train.observers": Setting(tuple[str, ...]),
    "train.prefetch": Setting(int, 0),
    "train.data_workers": Setting(int, 1),
    "evaluation.episodes": Setting(int, 1),
    "evaluation.steps": Setting(int | None, 0),
    "evaluation.ways": Setting(int | None, 1),
    "evaluation.shots": Setting(int | None, 1),
    "evaluation.queries": Setting(int | None, 1),
    "distributed.workers": Setting(int, 1),
    "distributed.devices": Setting(int, 1),
    "distributed.threads": Setting(int | None, 1),
    "distributed.timeout_s": Setting(float, 0, exclusive=True),
}
"""Every fixed setting (``section.key``); ``val_every`` and ``checkpoint_every`` 0 mean never
(a checkpoint is still written at the end), ``test_tasks`` 0 skips the final test.
Each validation that improves ``monitor`` (``auto``: validation accuracy for classification,
else loss; ``monitor_mode`` ``auto``: max for accuracy, else min) by more than ``min_delta``
writes the ``best`` checkpoint; ``patience`` N > 0 stops training after N validations
without improvement. ``observers`` names the run observers (``jsonl`` writes ``metrics.jsonl``).
``prefetch`` is how many meta-batches are drawn ahead in the background (0: none) and
``data_workers`` how many threads build them (see :mod:`metaplug.experiment.prefetch`).
``model.init_weights`` starts the model from a weights file or another run's checkpoint
(:mod:`metaplug.experiment.weights`); with ``model.init_weights_strict`` false the entries
that fit are loaded and the others reported instead of refused.
``evaluation.ways``/``shots``/``queries`` (``None``: the tasks' own) shape the validation and
test episodes, e.g. ProtoNets trained 60-way and tested 5-way."""


@dataclass(frozen=True)
class Choice:
    """A component by name, with its keyword options."""

    name: str | None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    iterations: int
    meta_batch_size: int
    log_every: int
    val_every: int
    val_tasks: int
    checkpoint_every: int
    test_tasks: int
    monitor: str = "auto"
    monitor_mode: str = "auto"
    patience: int = 0
    min_delta: float = 0.0
    observers: tuple[str, ...] = ("jsonl",)
    prefetch: int = 2
    data_workers: int = 1


@dataclass(frozen=True)
class EvaluationSettings:
    episodes: int
    steps: int | None
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None

    def episode_shape(self) -> dict[str, int]:
        """The episode options that override ``[tasks]`` for validation and test samplers."""
        return {
            k: v for k, v in (("ways", self.ways), ("shots", self.shots), ("queries", self.queries)) if v is not None
        }


@dataclass(frozen=True)
class DistributedSettings:
    """Data-parallel training (docs/user-guide.md, "Scaling out"): ``workers`` processes (the
    world size; a launcher's overrides it and the run records it), ``devices`` that one
    process trains on (several: the backend's ``devices=``, TensorFlow's ``MirroredStrategy``),
    ``threads`` per worker (``None``: the machine's cores shared out) and ``timeout_s``, how
    long a worker waits for the others before the run stops."""

    workers: int = 1
    devices: int = 1
    threads: int | None = None
    timeout_s: float = 300.0


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment; :meth:`as_dict` round-trips through :func:`from_dict`."""

    backend: str | None
    seed: int
    data_dir: str | None
    tasks: Choice
    model: Choice
    algorithm: Choice
    optimizer: Choice
    lr: float
    train: TrainSettings
    evaluation: EvaluationSettings
    device: str | None = None
    """The backend's device (``cpu``, ``cuda:1``, ``gpu``...); ``None``: the backend's default."""
    distributed: DistributedSettings = DistributedSettings()
    init_weights: str | None = None
    """``[model] init_weights``: a weights file or run directory the model starts from."""
    init_weights_strict: bool = True
    """``[model] init_weights_strict``: refuse init weights that do not fit the model exactly."""

    def as_dict(self) -> dict[str, Any]:
        def section(choice: Choice, **extra: Any) -> dict[str, Any]:
            return {"name": choice.name, **extra, **choice.options}

        return {
            "backend": self.backend,
            "device": self.device,
            "seed": self.seed,
            "data_dir": self.data_dir,
            "tasks": section(self.tasks),
            "model": section(self.model, init_weights=self.init_weights, init_weights_strict=self.init_weights_strict),
            "algorithm": section(self.algorithm),
            "optimizer": section(self.optimizer, lr=self.lr),
            "train": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.train).items()},
            "evaluation": dict(vars(self.evaluation)),
            "distributed": dict(vars(self.distributed)),
        }

    def to_toml(self) -> str:
        return dumps(self.as_dict(), header="metaplug experiment configuration (resolved)")

    def with_changes(self, **changes: Any) -> ExperimentConfig:
        return replace(self, **changes)


def defaults() -> dict[str, Any]:
    """A fresh copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def merge(base: dict[str, Any], update: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``base`` updated with ``update`` (tables merged key by key); unknown tables are errors."""
    for key, value in update.items():
        path = f"{where}{key}"
        if isinstance(value, Mapping):
            if not isinstance(base.get(key), dict):
                raise ConfigError(f"unknown config section [{path}].{_suggest_key(key, base)}")
            merge(base[key], value, f"{path}.")
        else:
            base[key] = value
    return base


def load_file(path: str | Path) -> dict[str, Any]:
    """Defaults updated with a TOML file."""
    return merge(defaults(), read_toml(Path(path)))


def set_value(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level ``key``) in the raw configuration."""
    parts = dotted.strip().split(".")
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"cannot set {dotted!r}: use KEY or SECTION.KEY, e.g. algorithm.inner_lr=0.01")
    if len(parts) == 2:
        section, key = parts
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"unknown config section {section!r}.{_suggest_key(section, raw)}")
        raw[section][key] = value
    else:
        raw[parts[0]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"algorithm.inner_lr=0.01"`` → ``("algorithm.inner_lr", 0.01)``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(value.strip())


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Check every fixed setting's type and range and reject unknown keys."""
    checked: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            if key not in DEFAULTS or not isinstance(DEFAULTS[key], dict):
                raise ConfigError(f"unknown config section [{key}].{_suggest_key(key, DEFAULTS)}")
            continue
        if key not in SETTINGS:
            raise ConfigError(f"unknown config key {key!r}.{_suggest_key(key, SETTINGS)}")
        checked[key] = SETTINGS[key].check(key, value)
    sections = {}
    for name in DEFAULTS:
        if not isinstance(DEFAULTS[name], dict):
            continue
        table = dict(raw.get(name, {}))
        if name == "distributed":  # runs saved before the section existed lack it
            table = {**DEFAULTS[name], **table}
        fixed = {k.split(".", 1)[1] for k in SETTINGS if k.startswith(f"{name}.")}
        for key in fixed:  # a key added after a run was saved takes its default
            table[key] = SETTINGS[f"{name}.{key}"].check(f"{name}.{key}", table.get(key, DEFAULTS[name].get(key)))
        if name not in COMPONENT_SECTIONS:
            unknown = sorted(set(table) - fixed)
            if unknown:
                raise ConfigError(f"unknown key {name}.{unknown[0]}.{_suggest_key(unknown[0], fixed)}")
        sections[name] = table

    def choice(name: str, *fixed: str) -> Choice:
        table = sections[name]
        return Choice(table["name"], {k: v for k, v in table.items() if k not in ("name", *fixed)})

    return ExperimentConfig(
        backend=checked.get("backend"),
        device=checked.get("device"),
        seed=checked.get("seed", DEFAULTS["seed"]),
        data_dir=checked.get("data_dir"),
        tasks=choice("tasks"),
        model=choice("model", "init_weights", "init_weights_strict"),
        algorithm=choice("algorithm"),
        optimizer=choice("optimizer", "lr"),
        lr=sections["optimizer"]["lr"],
        train=TrainSettings(**sections["train"]),
        evaluation=EvaluationSettings(**sections["evaluation"]),
        distributed=DistributedSettings(**sections["distributed"]),
        init_weights=sections["model"]["init_weights"],
        init_weights_strict=sections["model"]["init_weights_strict"],
    )


def _suggest_key(key: str, known: Any) -> str:
    names = sorted(known)
    hint = suggest(key, names)
    return hint or f" Known: {', '.join(names)}."

"""Declared options: a component's settings as a frozen dataclass that the host introspects.

A component declares its options once, as a subclass of :class:`Options` whose fields
are made with :func:`option`, and names it in its ``Options`` class attribute::

    @dataclass(frozen=True)
    class MyAlgoOptions(Options):
        inner_lr: float = option(0.01, minimum=0, exclusive=True, help="inner-loop learning rate")
        mode: str = option("fast", choices=("fast", "exact"))

    class MyAlgo(MetaLearner):
        Options = MyAlgoOptions

The host validates a configuration against it before building anything (one message
per bad value, prefixed with the config section), fills in the defaults so that the
saved configuration states every setting, and shows the fields in ``metaplug info``.
Constructing the dataclass runs the same checks, so a component built from Python is
validated by the same code with the same messages.

Supported field types: ``bool``, ``int``, ``float``, ``str``, a tuple of those
(``tuple[float, float]``), and any of them ``| None``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from metaplug.errors import ConfigError, suggest

OptionsT = TypeVar("OptionsT", bound="Options")

_RULE = "metaplug"


@dataclass(frozen=True)
class Rule:
    """What an option accepts beyond its type: a range or a set of choices."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False
    """The minimum itself is excluded (``greater than``)."""
    below_maximum: bool = False
    """The maximum itself is excluded (``less than``)."""
    choices: tuple[Any, ...] = ()
    help: str = ""
    path: bool = False
    """A file or folder: a relative path is made absolute (and ``~`` expanded) when the
    options are made, so a saved configuration still finds it from another directory."""

    def check(self, name: str, value: Any, given: Any = None) -> None:
        """One-line :class:`ConfigError` unless the normalised ``value`` fits; messages show
        ``given``, the value as the user wrote it (default: ``value``)."""
        given = value if given is None else given
        if self.choices and value not in self.choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, self.choices))}, got {given!r}")
        items, shown = (value, given) if isinstance(value, tuple) else ((value,), (given,))
        for item, raw in zip(items, shown, strict=True):
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                self._check_range(name, item, raw)

    def _check_range(self, name: str, value: float, given: Any) -> None:
        low, high = self.minimum, self.maximum
        if (
            low is not None
            and high is not None
            and (
                value < low
                or (self.exclusive and value == low)
                or value > high
                or (self.below_maximum and value == high)
            )
        ):
            opening, closing = "(" if self.exclusive else "[", ")" if self.below_maximum else "]"
            raise ConfigError(f"{name} must be in {opening}{_bound(low)}, {_bound(high)}{closing}, got {given!r}")
        if low is not None and (value <= low if self.exclusive else value < low):
            bound = f"greater than {_bound(low)}" if self.exclusive else f"at least {_bound(low)}"
            raise ConfigError(f"{name} must be {bound}, got {given!r}")
        if high is not None and (value >= high if self.below_maximum else value > high):
            bound = f"less than {_bound(high)}" if self.below_maximum else f"at most {_bound(high)}"
            raise ConfigError(f"{name} must be {bound}, got {given!r}")


def _bound(value: float) -> str:
    """A range's end as written: integers in full (``18446744073709551615``), floats short."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def option(
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
    below_maximum: bool = False,
    choices: Sequence[Any] = (),
    help: str = "",
    path: bool = False,
) -> Any:
    """A field of an :class:`Options` dataclass: its default and what it accepts.

    ``minimum``/``maximum`` bound numbers (and each entry of a tuple); ``exclusive``
    excludes the minimum, ``below_maximum`` the maximum; ``choices`` lists the allowed
    values; ``help`` is the one line ``metaplug info`` shows; ``path`` marks a string option
    that names a file or folder, made absolute when the options are made.
    """
    rule = Rule(minimum, maximum, exclusive, below_maximum, tuple(choices), help, path)
    return dataclasses.field(default=default, metadata={_RULE: rule})


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``metaplug info`` and the docs show it."""

    name: str
    type: str
    default: Any
    help: str = ""
    choices: tuple[Any, ...] = ()
    required: bool = False
    """No default: the option must be set (only undeclared options, read from ``__init__``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: a default that is not a plain value is shown by its ``repr``."""
        plain = self.default is None or isinstance(self.default, (bool, int, float, str, tuple, list))
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default if plain else repr(self.default),
            "help": self.help,
            "choices": list(self.choices),
            "required": self.required,
        }


@dataclass(frozen=True)
class Options:
    """Base class of declared options (see the module docstring).

    Subclasses are frozen dataclasses; override :meth:`validate` for checks that involve
    several fields. Values are normalised on construction: an integer given for a float
    option becomes a float, a list given for a tuple option a tuple.
    """

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            given = getattr(self, f.name)
            value = _normalise(f.name, given, hints[f.name])
            rule = f.metadata.get(_RULE)
            if rule is not None and rule.path and isinstance(value, str) and value:
                value = os.path.abspath(os.path.expanduser(value))
            object.__setattr__(self, f.name, value)
            if rule is not None and value is not None:
                rule.check(f.name, value, given)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise :class:`~metaplug.errors.ConfigError` with one line."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def parse(cls: type[OptionsT], values: Mapping[str, Any], owner: str = "", section: str = "") -> OptionsT:
        """Validated options from a configuration table.

        An unknown key is reported with ``owner`` (``"algorithm 'maml'"``), a suggestion and
        the accepted names; a bad value as ``section.name`` (``algorithm.inner_lr must be
        greater than 0, got -1``).
        """
        names = cls.names()
        for key in values:
            if key not in names:
                accepted = ", ".join(names) or "no options"
                raise ConfigError(
                    f"{owner or cls.__name__} has no option {key!r}.{suggest(key, names)} It accepts: {accepted}"
                )
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{section}.{exc}" if section else str(exc)) from None

    def as_dict(self) -> dict[str, Any]:
        """Every option by name (tuples stay tuples)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[OptionInfo]:
        """The declared options: name, type, default, help and choices."""
        hints = _type_hints(cls)
        described = []
        for f in dataclasses.fields(cls):
            rule = f.metadata.get(_RULE) or Rule()
            described.append(OptionInfo(f.name, _type_name(hints[f.name]), f.default, rule.help, rule.choices))
        return described


def checked(name: str, value: Any, kind: Any, **rule: Any) -> Any:
    """``value`` checked as an option of type ``kind`` with the :func:`option` keywords
    ``rule`` (``minimum``, ``choices``...), normalised; the same messages as :class:`Options`.
    For arguments that are not options, such as ``evaluate(..., steps=3)``."""
    normalised = _normalise(name, value, kind)
    if normalised is not None:
        Rule(**rule).check(name, normalised, value)
    return normalised


def options_of(implementation: Any) -> type[Options] | None:
    """The :class:`Options` subclass a component implementation declares, if any."""
    declared = getattr(implementation, "Options", None)
    return declared if isinstance(declared, type) and issubclass(declared, Options) else None


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in Options._hints:
        Options._hints[cls] = typing.get_type_hints(cls)
    return Options._hints[cls]


def _normalise(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint`` (int accepted for float, list for tuple)."""
    allowed = _alternatives(hint)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{name} must be set")
    for kind in allowed:
        if kind is type(None):
            continue
        if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
            items = typing.get_args(kind)
            if len(items) == 2 and items[1] is Ellipsis:
                items = (items[0],) * len(value)
            if len(items) != len(value):
                raise ConfigError(f"{name} must have {len(items)} entries, got {value!r}")
            return tuple(_normalise(name, v, t) for v, t in zip(value, items, strict=True))
        converted = _scalar(value, kind)
        if converted is not _MISMATCH:
            if isinstance(converted, float) and not math.isfinite(converted):
                raise ConfigError(f"{name} must be finite, got {value!r}")
            return converted
    raise ConfigError(f"{name} must be {_describe(allowed)}, got {value!r}")


_MISMATCH = object()


def _scalar(value: Any, kind: Any) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if isinstance(value, bool):
        return _MISMATCH
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else _MISMATCH
    if kind is float:
        return float(value) if isinstance(value, numbers.Real) else _MISMATCH
    if kind is str:
        return value if isinstance(value, str) else _MISMATCH
    if kind is Any:
        return value
    return value if isinstance(kind, type) and isinstance(value, kind) else _MISMATCH


def _alternatives(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


_ARTICLES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(allowed: tuple[Any, ...]) -> str:
    words = []
    for kind in allowed:
        if kind is type(None):
            continue
        if typing.get_origin(kind) is tuple:
            words.append(
                "a list of "
                + " and ".join(_ARTICLES.get(a, "values") for a in typing.get_args(kind) if a is not Ellipsis)
            )
        else:
            words.append(_ARTICLES.get(kind, getattr(kind, "__name__", str(kind))))
    return " or ".join(words)


def _type_name(hint: Any) -> str:
    names = []
    for kind in _alternatives(hint):
        if kind is type(None):
            names.append("None")
        elif typing.get_origin(kind) is tuple:
            names.append(
                "tuple[" + ", ".join("..." if a is Ellipsis else a.__name__ for a in typing.get_args(kind)) + "]"
            )
        else:
            names.append(getattr(kind, "__name__", str(kind)))
    return " | ".join(names)


__all__ = ["OptionInfo", "Options", "Rule", "checked", "option", "options_of"]

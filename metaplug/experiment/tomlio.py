"""Reading TOML (``tomllib``) and writing it (``tomli-w``).

Paths that are not valid UTF-8 (Python holds their undecodable bytes as lone surrogates,
``os.fsdecode``) are written as those very bytes and read back the same way, so a run in
any folder round-trips; every other string is plain UTF-8 TOML.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from metaplug.errors import ConfigError

ENCODING_ERRORS = "surrogateescape"
"""How strings that hold undecodable path bytes are encoded and decoded."""


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a one-line :class:`ConfigError`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.loads(handle.read().decode("utf-8", ENCODING_ERRORS))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def parse_value(text: str) -> Any:
    """A command-line value as TOML (``3``, ``0.5``, ``true``, ``[1, 2]``, ``"x"``), else a bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def dumps(data: Mapping[str, Any], header: str = "") -> str:
    """``data`` as TOML (``None`` values are left out), after ``header`` as comments.
    Encode the text with :func:`encode` to keep undecodable path bytes."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    try:
        body = tomli_w.dumps(_without_none(data))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot write the configuration as TOML: {exc}") from exc
    return comments + body


def encode(text: str) -> bytes:
    """TOML text as the bytes of its file (see the module's note on paths)."""
    return text.encode("utf-8", ENCODING_ERRORS)


def _without_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, Mapping) else v for k, v in data.items() if v is not None}


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")

"""Your own model from an importable factory: ``--model my_pkg.my_module:build``.

A factory is a callable ``build(spec, **options)`` taking the tasks'
:class:`~metaplug.contract.interfaces.TaskSpec` (and the ``[model]`` options, if any)
and returning a framework model (a ``torch.nn.Module``, a ``keras.Model``) that the
chosen backend's algorithms accept. The module is imported as Python would from the
working directory.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from metaplug.contract.interfaces import TaskSpec
from metaplug.errors import ConfigError, MetaplugError

SEPARATOR = ":"


def is_factory(name: str) -> bool:
    """Whether the model name ``name`` is a ``module:function`` reference."""
    return SEPARATOR in name


def load_factory(reference: str) -> Callable[..., Any]:
    """The callable that ``reference`` (``module:attribute``, the attribute possibly dotted) names."""
    module_name, _, attribute = reference.partition(SEPARATOR)
    if not module_name or not attribute or SEPARATOR in attribute:
        raise ConfigError(f"model {reference!r}: a factory is named 'module:function', e.g. my_pkg.models:build")
    with working_directory_importable():
        try:
            target: Any = importlib.import_module(module_name)
        except (Exception, SystemExit) as exc:  # the user's module: any failure is a bad factory
            raise ConfigError(
                f"cannot import module {module_name!r} of model factory {reference!r}: {type(exc).__name__}: {exc}"
            ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"module {module_name!r} has no {attribute!r} (model factory {reference!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model factory {reference!r} is a {type(target).__name__}, not a callable")
    return target


def build_with_factory(reference: str, spec: TaskSpec, options: Mapping[str, Any]) -> Any:
    """``factory(spec, **options)`` for the factory ``reference`` names; its failure is one line."""
    factory = load_factory(reference)
    try:
        return factory(spec, **options)
    except MetaplugError:
        raise
    except Exception as exc:  # the user's code
        raise ConfigError(f"model factory {reference!r} failed: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def working_directory_importable() -> Iterator[None]:
    """Modules in the working directory importable (as ``python -m`` allows) while active."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)

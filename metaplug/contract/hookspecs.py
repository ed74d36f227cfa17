"""The hooks a metaplug plugin implements: the whole contract between host and plugins.

A plugin is a module (named by an entry point in the ``metaplug`` group) with
functions decorated by :data:`metaplug.hookimpl`. Each ``register_*`` hook receives
a ``register`` callback; call it once per component with a
:class:`metaplug.Component`. Hooks run once per process, the first time a
component or the plugin list is needed, and must be cheap: import no deep
learning framework here, name the implementation with ``target`` instead.

A hook implementation may accept fewer arguments than its spec (pluggy passes
only the names it asks for), so new arguments can be added to a spec without
breaking existing plugins. See ``docs/hooks.md`` for the compatibility policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from metaplug import PROJECT_NAME
from metaplug.contract.records import Register

if TYPE_CHECKING:
    import click

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_backends(register: Register) -> None:
    """Register tensor backends (``torch``, ``tensorflow``, ...).

    :param register: call with ``Component(name, summary, target)``. ``target``
        names a class implementing :class:`metaplug.contract.interfaces.Backend`; it is
        instantiated with no arguments when the backend is first used, or with
        ``device=`` when the user sets one (accept that keyword to be placeable).
        ``backends`` and ``problems`` stay empty.

    .. versionadded:: 0.1.0
    """


@hookspec
def register_algorithms(register: Register) -> None:
    """Register meta-learning algorithms.

    :param register: call with ``Component(name, summary, target, backends,
        problems)``. ``target`` names a class implementing
        :class:`metaplug.contract.interfaces.Algorithm` (its options declared in an
        ``Options`` class attribute); ``backends`` lists the backends that class runs
        on and ``problems`` the problem kinds it supports. Register one record per
        implementation: the same ``name`` may be registered for different backends by
        different plugins.

    .. versionadded:: 0.1.0
    """


@hookspec
def register_task_samplers(register: Register) -> None:
    """Register task samplers (datasets of episodes).

    :param register: call with ``Component(name, summary, target, problems)``.
        ``target`` names a class implementing :class:`metaplug.contract.interfaces.TaskSampler`
        (its options declared in an ``Options`` class attribute); ``problems`` holds
        exactly the one problem kind its episodes pose.

    .. versionadded:: 0.1.0
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register outer optimizers and inner-loop update rules.

    :param register: call with ``Component(name, summary, target, backends,
        role)``. With ``role="outer"``, ``target`` names an
        :class:`metaplug.contract.interfaces.OptimizerFactory` for the meta-parameters;
        with ``role="inner"``, a class implementing
        :class:`metaplug.contract.interfaces.InnerRule` (name-keyed ``init(params, lr)``
        and ``step(params, grads, learnables, lr)``, the same contract on every backend),
        which the host instantiates and passes to algorithms as ``rule=``.

    .. versionadded:: 0.1.0
    """


@hookspec
def register_models(register: Register) -> None:
    """Register models: named networks that algorithms meta-learn.

    :param register: call with ``Component(name, summary, target, backends)``. ``target``
        names a class implementing :class:`metaplug.contract.interfaces.ModelBuilder` (its
        options declared in an ``Options`` class attribute; the standard models' are in
        :mod:`metaplug.contract.hyperparameters`, shared by every backend); the host calls
        ``Builder.build(backend, spec)`` with the backend instance and a
        :class:`~metaplug.contract.interfaces.ModelSpec` holding the validated options.
        ``backends`` lists the backends that class builds for; register one record per
        implementation, as for algorithms. ``problems`` and ``role`` stay empty.

    .. versionadded:: 0.1.0
    """


@hookspec
def register_observers(register: Register) -> None:
    """Register run observers: loggers that follow a training run (TensorBoard, ...).

    :param register: call with ``Component(name, summary, target)``. ``target`` names a
        subclass of :class:`metaplug.contract.observers.RunObserver`; the host constructs it
        with no arguments for each run whose ``train.observers`` (or ``--log NAME``) names it
        and calls its ``on_*`` methods as the run goes. Import your logging library in that
        class's module, not in the hook. ``backends``, ``problems`` and ``role`` stay empty.

    .. versionadded:: 0.1.0
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``metaplug`` CLI.

    :param cli: the top-level :class:`click.Group`; add commands with
        ``@cli.command()``. Keep heavy imports inside the command functions.
        Called once when the CLI starts.

    .. versionadded:: 0.1.0
    """

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

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Splits every task sampler accepts; their classes or tasks never overlap."""


@dataclass(frozen=True)
class TaskSpec:
    """What every episode of a sampler looks like; algorithms size their heads from it."""

    problem: str
    """``"regression"`` or ``"classification"``."""
    input_shape: tuple[int, ...]
    """Shape of one example, channels first for images (``(1, 28, 28)``)."""
    output_size: int
    """Classification: ways per episode. Regression: outputs per example."""
    num_classes: int | None = None
    """Classification: number of classes in the split (for transfer baselines)."""
    default_model: str = "mlp"
    """Standard model that suits these inputs (``"mlp"`` or ``"conv4"``)."""


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
    """A standard model for :meth:`Backend.build_model`."""

    name: str
    """``"mlp"`` (sinusoid: 1-40-40-1) or ``"conv4"`` (Omniglot), or a backend extra."""
    input_shape: tuple[int, ...]
    output_size: int
    options: Mapping[str, Any] = field(default_factory=dict)
    """Model options: ``hidden`` for the MLP; ``filters``, ``pooling`` (``"max"`` or
    ``"stride"``) for conv4."""


@runtime_checkable
class TaskSampler(Protocol):
    """Produces batches of episodes as numpy arrays, reproducibly from a seed.

    Constructed as ``Sampler(split="train", seed=0, **options)`` where ``split``
    is one of :data:`SPLITS`. The same seed, split and options give the same
    episodes on every run and machine.
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
    """A tensor framework: converts episodes and builds the standard models.

    Constructed with no arguments, or with ``device=...`` (``"cpu"``, ``"cuda:1"``...)
    when the user picks a device; raise ``ConfigError`` for one it cannot use.
    """

    name: str
    models: tuple[str, ...]
    """Names :meth:`build_model` accepts."""

    def seed(self, seed: int) -> None:
        """Seed the framework's random generators (model initialisation, dropout)."""
        ...

    def to_tensors(self, batch: EpisodeBatch) -> Any:
        """The batch as the framework's tensors on the backend's device."""
        ...

    def build_model(self, spec: ModelSpec) -> Any:
        """A freshly initialised standard model."""
        ...


@runtime_checkable
class OptimizerFactory(Protocol):
    """Builds an outer optimizer: ``factory(params, lr=1e-3, **options)``.

    ``params`` and the returned optimizer are the backend's own types (for
    example a list of ``torch.nn.Parameter`` and a ``torch.optim.Optimizer``).
    """

    def __call__(self, params: Any, *, lr: float, **options: Any) -> Any: ...


@runtime_checkable
class AdaptedModel(Protocol):
    """A model adapted to one task."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for ``x`` of shape ``(N, *input_shape)``: regression values
        ``(N, output_size)`` or class scores ``(N, ways)``."""
        ...


@runtime_checkable
class Algorithm(Protocol):
    """A meta-learning algorithm for one backend.

    Constructed by the host as::

        Algorithm(backend=backend, model=model, spec=task_spec, optimizer=factory, **hyperparameters)

    where ``model`` comes from ``backend.build_model`` (or the user),
    ``optimizer`` is an :class:`OptimizerFactory` with its learning rate bound,
    and ``hyperparameters`` are the keyword arguments of ``__init__`` (their
    defaults and types are what ``metaplug info`` shows). An algorithm that
    cannot handle ``spec.problem`` raises :class:`metaplug.errors.ConfigError`.
    """

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update on a batch of episodes; returns mean metrics
        (``loss``, plus ``accuracy`` for classification) of the query sets."""
        ...

    def adapt(
        self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None
    ) -> AdaptedModel:
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

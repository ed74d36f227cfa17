"""What every torch algorithm shares: construction, tensors, the outer step, state."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaplug.contract import calibration
from metaplug.contract.calibration import BatchingChoice
from metaplug.contract.freezing import Freezing
from metaplug.contract.hyperparameters import BatchingOptions, require_batching_options
from metaplug.contract.interfaces import EpisodeBatch, InnerRule, ModelSpec, TaskSpec
from metaplug.contract.options import checked
from metaplug.errors import ConfigError
from metaplug_torch import batching, inner, models, optimizers
from metaplug_torch.backend import Backend, Episodes
from metaplug_torch.functional import FunctionalModel
from metaplug_torch.losses import accuracy, task_loss
from metaplug_torch.precision import Precision

MODEL_PREFIX = "model."


class AdaptedModel:
    """A model adapted to one task: ``predict(x)`` runs ``forward`` without gradients.

    ``weights`` are the adapted model's weights by name, when the adaptation is weights
    (not for ProtoNets, whose adapted model is the support set's prototypes).
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        backend: Backend,
        dtype: torch.dtype,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self._forward, self._backend, self._dtype = forward, backend, dtype
        self._weights = weights

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._forward(self._backend.tensor(np.asarray(x), self._dtype)).cpu().numpy()

    def weights(self) -> dict[str, np.ndarray]:
        """The adapted weights by name, in the shared layout of docs/models.md."""
        if self._weights is None:
            raise ConfigError("this algorithm's adapted model is not a set of weights (e.g. ProtoNets' prototypes)")
        return {name: _numpy(value) for name, value in self._weights.items()}

    def export(self, path: str | Path, format: str, example: np.ndarray) -> Path:
        """Write the model as ``format`` (:data:`metaplug_torch.export.FORMATS`) to ``path``,
        traced on the batch ``example``; it predicts without metaplug (see :mod:`metaplug_torch.export`)."""
        from metaplug_torch.export import export

        on_device = self._backend.tensor(np.asarray(example), self._dtype).device
        return export(lambda x: self._forward(x.to(on_device)).cpu(), example, self._dtype, path, format)


class MetaLearner:
    """Base class of torch algorithms (the extension API: see "Writing a torch
    algorithm" in metaplug-torch's README).

    Subclasses set ``name``, ``problems`` and ``Options`` (a
    :class:`~metaplug.contract.options.Options` dataclass; the constructor validates the
    keyword options into ``self.options``), implement :meth:`meta_gradients`,
    :meth:`evaluate_task` and :meth:`adapt`, and may override :meth:`extra_parameters`,
    :meth:`setup`, :meth:`evaluation_parameters` and :meth:`evaluation_tasks`. They call
    the helpers :meth:`map_tasks`, :meth:`loss_and_accuracy`,
    :meth:`detached_parameters`, :meth:`evaluation_steps` and :meth:`episode_tensors`.

    Set by ``__init__``: ``self.options``, ``self.spec`` (the task spec),
    ``self.backend``, ``self.model`` (a :class:`~metaplug_torch.functional.FunctionalModel`),
    ``self.params`` (name -> ``nn.Parameter``, the model's meta-parameters), ``self.rule``
    (the inner rule: ``rule=``, the built-in one the ``inner_rule`` option names, or
    :class:`~metaplug_torch.inner.InnerSGD` without that option; it leaves the weights
    frozen in adaptation unchanged), ``self.freezing`` (the
    :class:`~metaplug.contract.freezing.Freezing` of the ``freeze`` options), ``self.extra`` (the
    meta-parameters of :meth:`extra_parameters`), ``self.dtype``, ``self.device``,
    ``self.mode`` (the resolved batching mode; for ``auto``, the rule's until the first
    :meth:`meta_train_step` measures it: :meth:`settle_batching`), ``self.precision`` (the
    :class:`~metaplug_torch.precision.Precision` of the ``precision`` option, which
    ``self.model`` computes with; ``meta_train_step``, ``evaluate`` and ``adapt`` run in its
    scope), ``self.optimizer`` (the outer optimizer over both) and ``self.seed``
    (``torch.initial_seed()``: the run's seed, which with the outer step keys the model's
    training-time randomness, e.g. DropBlock).
    """

    name = ""
    problems: tuple[str, ...] = ("regression", "classification")
    Options: type[BatchingOptions] = BatchingOptions
    vmap_chunk: int | None = None
    """Tasks per ``torch.func.vmap`` call in ``vectorized`` mode (``None``: the whole batch)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        require_batching_options(cls)
        if "adapt" in vars(cls):  # an adaptation's inner loop computes as evaluate's does
            cls.adapt = _as_evaluated(vars(cls)["adapt"])  # type: ignore[method-assign]

    def __init__(
        self,
        backend: Backend | None = None,
        model: torch.nn.Module | None = None,
        spec: TaskSpec | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        rule: InnerRule | None = None,
        **options: Any,
    ) -> None:
        self.options = self.Options.parse(options, owner=f"algorithm {self.name!r}")
        if spec is None:
            raise ConfigError(f"{self.name} needs the task spec (spec=sampler.spec)")
        if spec.problem not in self.problems:
            raise ConfigError(f"{self.name} supports {' and '.join(self.problems)} only, not {spec.problem} tasks")
        self.spec = spec
        self.backend = backend if backend is not None else Backend()
        if model is None:
            model = self.backend.build_model(ModelSpec(spec.default_model, spec.input_shape, spec.output_size))
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = FunctionalModel(model)
        self.params = self.model.parameters()
        if not self.params:
            raise ConfigError("the model has no parameters to meta-learn")
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.precision = Precision(self.options.precision, self.dtype, self.device)
        self.model.precision = self.precision
        self.check_model()
        if callable(getattr(self.backend, "fit_threads", None)):
            self.backend.fit_threads(model)  # one thread for models as small as the sinusoid MLP
        recompute = getattr(self.options, "recompute_inner", False) and not getattr(self.options, "first_order", False)
        self.mode = batching.resolve(self.options.batching, self.model, self.device, recompute=recompute)
        self.auto_candidates = batching.eligible(self.model, recompute=recompute)
        """The concrete modes ``auto`` may choose between (:func:`metaplug_torch.batching.eligible`)."""
        self.batching_choice: BatchingChoice | None = None
        """What ``auto`` stands for and how it was chosen, once :meth:`settle_batching` has run."""
        if self.options.batching != "auto":
            self.batching_choice = BatchingChoice(self.mode, "requested")
        self.freezing = Freezing.resolve(self.options.freeze, self.options.freeze_during, self.model.names)
        self.rule = self.freezing.rule(inner.resolve_rule(rule, getattr(self.options, "inner_rule", None), self.name))
        self.extra: dict[str, torch.nn.Parameter] = {
            k: torch.nn.Parameter(v.detach().clone()) for k, v in self.extra_parameters().items()
        }
        factory = optimizer if optimizer is not None else optimizers.Adam
        self.optimizer = factory([*self.params.values(), *self.extra.values()])
        self.seed = torch.initial_seed()
        self._steps = 0
        self.setup()

    # -- what subclasses implement or override --------------------------------------
    def extra_parameters(self) -> dict[str, torch.Tensor]:
        """Initial values of meta-learned tensors besides the model's, keyed by their
        ``state_dict`` name (default: none).

        Called once by ``__init__`` after ``self.options``, ``self.model``, ``self.params``,
        ``self.rule``, ``self.dtype`` and ``self.device`` are set; the values are copied into
        ``nn.Parameter`` objects in ``self.extra``, which the outer optimizer updates and the
        state saves.
        """
        return {}

    def setup(self) -> None:
        """Called once at the end of ``__init__``, with everything set: create further state
        (say, what ``state_dict`` saves besides parameters). Default: nothing."""

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        """Fill ``.grad`` of the meta-parameters (``self.params`` and ``self.extra``) with
        the gradient of the batch's mean query loss; return per-task ``(loss, accuracy)``.

        ``data`` is the batch as tensors (:meth:`episode_tensors`; task axis first),
        ``batch`` the numpy original (for extras such as ``batch.classes``). The gradients
        are zero (``None``) on entry and the outer optimizer steps right after. Each
        returned tensor has shape ``(T,)``; accuracy is zeros for regression. Extra
        returned tensors are ignored. :meth:`map_tasks` with ``backward_scale=1/T``
        does all of this for a per-task function returning ``(loss, accuracy)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement meta_gradients()")

    def evaluate_task(
        self, shared: Any, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One task's query ``(loss, loss_before, accuracy)``, scalar tensors, after adapting
        to its support set ``(sx, sy)`` with ``steps`` inner steps.

        ``shared`` is :meth:`evaluation_parameters`; the tensors have no task axis. An
        algorithm whose :meth:`evaluation_tasks` appends per-task tensors receives them
        after ``steps``: declare ``(..., steps, *extra)``.
        ``loss_before`` is the query loss before adaptation (NaN where undefined);
        accuracy is zero for regression. Runs inside :meth:`map_tasks` (under
        ``torch.func.vmap`` in ``vectorized`` mode: write it functionally), under
        ``torch.no_grad`` in ``vectorized`` mode and with gradients enabled otherwise (so an
        inner loop can use ``torch.autograd.grad``); results come back detached.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate_task()")

    def evaluation_tasks(self, data: Episodes, steps: int) -> tuple[torch.Tensor, ...]:
        """The per-task tensors (task axis first) that :meth:`evaluate` maps
        :meth:`evaluate_task` over, after ``shared``: ``(sx, sy, qx, qy)`` by default.
        Override to append more (they arrive after ``steps``), e.g. Reptile's mini-batch
        indices."""
        return data.support_x, data.support_y, data.query_x, data.query_y

    def evaluation_parameters(self) -> Any:
        """What :meth:`evaluate` passes to every :meth:`evaluate_task` call as ``shared``
        (default: :meth:`detached_parameters`). Override to pass more, e.g. a tuple of
        the parameters and detached ``self.extra`` entries."""
        return self.detached_parameters()

    def initial_model(self) -> AdaptedModel:
        """The meta-learned model itself, not adapted to any task (what ``export`` writes
        without a support set)."""
        frozen = {k: v.detach() for k, v in self.params.items()}
        return AdaptedModel(lambda x: self.model(frozen, x), self.backend, self.dtype, frozen)

    def check_model(self) -> None:
        """Fail with one line when the model does not fit the tasks: run it on two zero
        examples and compare its output with ``(2, spec.output_size)`` (override for an
        algorithm that uses the model otherwise, e.g. only its embedding)."""
        self.spec.check_output_shape(self.probe_model(lambda x: self.model(self.params, x)))

    def probe_model(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[int, ...]:
        """The shape of ``forward``'s output for two zero examples; a model that fails on
        them is a :class:`~metaplug.errors.ConfigError` naming the input shape."""
        x = torch.zeros((2, *self.spec.input_shape), dtype=self.dtype, device=self.device)
        try:
            with torch.no_grad():
                return tuple(forward(x).shape)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            message = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            raise ConfigError(
                f"the model fails on examples of shape {tuple(self.spec.input_shape)} (the tasks' inputs): "
                f"{type(exc).__name__}: {message}"
            ) from None

    # -- the Algorithm interface -------------------------------------------------------
    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update on ``batch``; mean query ``loss`` (and ``accuracy``). The first
        one settles ``batching = "auto"`` (:meth:`settle_batching`) on ``batch``."""
        if self.batching_choice is None:
            self.settle_batching(batch)
        return self._meta_train_step(batch)

    def settle_batching(self, batch: EpisodeBatch | None = None, why: str = "") -> BatchingChoice:
        """Fix the concrete mode ``batching = "auto"`` stands for, once, and return it.

        With ``batch``, measured on its first tasks or taken from the cache
        (:func:`metaplug.contract.calibration.choose`); the timed steps leave every weight,
        the optimizer's state and the random generators as they were. Without, the rule of
        :func:`metaplug_torch.batching.resolve` (``why`` says why nothing was measured).
        A run records the result in its configuration, so that resuming it runs the same mode.
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
        return self.batching_choice

    def _batching_trial(self, mode: str, batch: EpisodeBatch) -> calibration.Step:
        """One meta-training step on ``batch`` in ``mode``, finished on the device when it returns."""

        def step() -> None:
            self.mode = mode
            self._meta_train_step(batch)  # its metrics are read back: the device has finished

        return step

    def _calibration_key(self, batch: EpisodeBatch) -> dict[str, Any]:
        """This backend's part of the calibration cache's key."""
        device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        options = {k: v for k, v in self.options.as_dict().items() if k != "batching"}
        return {
            "backend": "torch",
            "framework": torch.__version__,
            "device": f"{self.device} {device_name}".strip(),
            "threads": torch.get_num_threads(),
            "dtype": str(self.dtype),
            "model": type(self.model.module).__qualname__,
            "weights": calibration.digest([[n, list(p.shape)] for n, p in self.params.items()]),
            "algorithm": self.name,
            "options": options,
            "episodes": [list(batch.support_x.shape[1:]), list(batch.query_x.shape[1:]), batch.num_tasks],
        }

    @contextlib.contextmanager
    def _state_kept(self) -> Iterator[None]:
        """Steps taken inside leave no trace: weights, optimizer state, step count, mode
        and torch's random generators are restored on exit (as a checkpoint restores them)."""
        state, steps, mode = self.state_dict(), self._steps, self.mode
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                yield
            finally:
                self.load_state_dict(state)
                self._steps, self.mode = steps, mode
                self.optimizer.zero_grad(set_to_none=True)

    def _meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        data = self.episode_tensors(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with models.meta_training(self.seed, self.training_step, batch.first_task), self.precision.scope():
            loss, acc = self.meta_gradients(data, batch)[:2]
        for name in self.freezing.training:  # torch.optim skips parameters without a gradient
            self.params[name].grad = None
        self.optimizer.step()
        self._steps += 1
        return self._metrics(loss, acc)

    @property
    def training_step(self) -> int:
        """Outer steps taken: the outer optimizer's count (saved in the state, so a resumed
        run continues it), or for an optimizer without one, this object's."""
        return int(getattr(self.optimizer, "steps_taken", self._steps))

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        """Per-task ``loss``, ``loss_before`` and (classification) ``accuracy``."""
        data = self.episode_tensors(batch)
        steps = self.evaluation_steps(steps)
        with batching.no_grad_unless(self.mode != "vectorized"), self.precision.scope():
            loss, before, acc = self.map_tasks(
                lambda shared, sx, sy, qx, qy, *extra: self.evaluate_task(shared, sx, sy, qx, qy, steps, *extra),
                self.evaluation_parameters(),
                self.evaluation_tasks(data, steps),
            )
        result = {"loss": _numpy(loss), "loss_before": _numpy(before)}
        if self.spec.problem == "classification":
            result["accuracy"] = _numpy(acc)
        return result

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> AdaptedModel:
        """Adapt to one task's support set (numpy, no task axis) with ``steps`` inner steps
        (``None``: :meth:`evaluation_steps`); an :class:`AdaptedModel`."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt()")

    def state_dict(self) -> dict[str, np.ndarray]:
        """``model.*`` (layout of docs/models.md), extra meta-parameters and ``optimizer.*``."""
        state = {MODEL_PREFIX + k: _numpy(v) for k, v in self.model.module.state_dict().items()}
        state.update({k: _numpy(v) for k, v in self.extra.items()})
        state.update(optimizers.optimizer_state(self.optimizer))
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; shapes and names must match this algorithm's."""
        targets = {MODEL_PREFIX + k: v for k, v in self.model.module.state_dict().items()}
        targets.update(self.extra)
        missing = [k for k in targets if k not in state]
        if missing:
            raise ConfigError(f"state has no entry {missing[0]!r} ({len(missing)} missing)")
        unknown = [k for k in state if k not in targets and not k.startswith(optimizers.PREFIX)]
        if unknown:
            raise ConfigError(f"state entry {unknown[0]!r} does not belong to {self.name}")
        with torch.no_grad():
            for key, target in targets.items():
                value = np.asarray(state[key])
                if tuple(value.shape) != tuple(target.shape):
                    raise ConfigError(f"state entry {key!r} has shape {value.shape}, expected {tuple(target.shape)}")
                target.copy_(torch.from_numpy(np.array(value)))
        optimizers.load_optimizer_state(
            self.optimizer, {k: v for k, v in state.items() if k.startswith(optimizers.PREFIX)}
        )

    # -- helpers for subclasses ---------------------------------------------------------
    def episode_tensors(self, batch: EpisodeBatch) -> Episodes:
        """``batch`` as tensors on this algorithm's device (inputs in ``self.dtype``, labels
        int64); a :class:`~metaplug.errors.ConfigError` if its problem is not the spec's."""
        if batch.problem != self.spec.problem:
            raise ConfigError(f"{self.name} was set up for {self.spec.problem} but got a {batch.problem} batch")
        return self.backend.to_tensors(batch, self.dtype)

    def map_tasks(
        self, fn: batching.TaskFn, shared: Any, tasks: Sequence[torch.Tensor], backward_scale: float | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Run ``fn(shared, *task)`` on every task and stack its outputs along a new task axis.

        ``tasks`` are tensors with a task axis first (e.g. ``(sx, sy, qx, qy)``); ``fn``
        sees one task's slices and returns a tuple of tensors. How tasks are batched
        (``vectorized``, a loop, ...) is ``self.mode``, with at most ``vmap_chunk`` tasks per
        ``torch.func.vmap`` call. With ``backward_scale`` the first output (the per-task loss) is
        back-propagated, scaled by it, into the leaves ``shared`` depends on (accumulating
        in ``.grad``), so ``backward_scale=1/T`` leaves the mean loss's gradient there.
        Returned outputs are detached.
        """
        return batching.map_tasks(fn, shared, tasks, self.mode, backward_scale=backward_scale, chunk=self.vmap_chunk)

    def detached_parameters(self) -> dict[str, torch.Tensor]:
        """The model's parameters cut from the meta-gradient (requiring gradients of their
        own outside ``vectorized`` mode, where the inner loop uses ``torch.autograd.grad``)."""
        if self.mode != "vectorized":
            return {k: v.detach().requires_grad_() for k, v in self.params.items()}
        return {k: v.detach() for k, v in self.params.items()}

    def evaluation_steps(self, steps: int | None) -> int:
        """Inner steps for ``evaluate``/``adapt``: ``steps``, checked (an integer >= 0), or
        ``self.options.evaluation_steps`` (0 for options without it) when ``None``."""
        if steps is None:
            return getattr(self.options, "evaluation_steps", 0)
        return checked("steps", steps, int, minimum=0)

    def _metrics(self, loss: torch.Tensor, acc: torch.Tensor) -> dict[str, float]:
        metrics = {"loss": float(loss.mean())}
        if self.spec.problem == "classification":
            metrics["accuracy"] = float(acc.mean())
        return metrics

    def loss_and_accuracy(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scalar ``(loss, accuracy)`` of one task's model ``output`` against ``target``:
        cross-entropy of logits (or log-probabilities) and accuracy for classification,
        MSE and a zero accuracy for regression."""
        loss = task_loss(self.spec.problem, output, target)
        if self.spec.problem == "classification":
            return loss, accuracy(output, target)
        return loss, torch.zeros((), dtype=loss.dtype, device=loss.device)


def _as_evaluated(adapt: Callable[..., AdaptedModel]) -> Callable[..., AdaptedModel]:
    """A subclass's ``adapt`` run as :meth:`MetaLearner.evaluate` runs a task: in its
    algorithm's :meth:`Precision.scope` (TensorFloat-32 switches for the inner loop's
    backward passes too) and in the :func:`~metaplug_torch.models.execution_style` of its
    batching mode (``vectorized``'s inner loop uses ``torch.func``, whose layers differ)."""

    @functools.wraps(adapt)
    def adapt_as_evaluated(self: MetaLearner, *args: Any, **kwargs: Any) -> AdaptedModel:
        with self.precision.scope(), models.execution_style(self.mode):
            return adapt(self, *args, **kwargs)

    return adapt_as_evaluated


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A contiguous copy (never a view of a live CPU tensor)."""
    return np.array(t.detach().cpu().numpy(), order="C", copy=True)

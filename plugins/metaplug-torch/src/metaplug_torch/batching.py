"""Running a per-task function over a batch of tasks: vectorized, per-task loops, chunks.

Modes (the ``batching`` option of every torch algorithm, declared by the host as
:data:`metaplug.contract.hyperparameters.BATCHING`):

``"vectorized"``
    ``torch.func.vmap`` over the tasks (in chunks of ``chunk`` tasks when set);
    batch norm switches to elementary ops, whose second-order gradients are exact
    under ``vmap`` (the native op's are not, as of torch 2.13).
``"loop"``
    One task at a time with ``torch.autograd.grad``; each task's backward pass runs
    right away, so only one task's graph is alive (memory-bound models such as conv4;
    see also :data:`metaplug_torch.models.CHANNELS_LAST_ON_CPU`).
``"reference"``
    The plain per-task loop of learn2learn and higher: cloned parameters,
    ``torch.autograd.grad(create_graph=True)``, the default memory order. For
    checking and as the benchmarks' baseline.
``"auto"``
    Measured on the machine: the first meta-training step times ``"loop"`` and
    ``"vectorized"`` (:func:`eligible`) on a few tasks and keeps the faster, cached per
    machine, model, episode shape and algorithm (:mod:`metaplug.contract.calibration`;
    ``METAPLUG_CALIBRATE=0`` turns it off). Until then, and without measuring, the rule
    of :func:`resolve`: ``"loop"`` for models with native batch norm (whose second-order
    gradients ``vmap`` gets wrong) and, on the CPU, for convolutional models;
    ``"vectorized"`` otherwise: the MLP everywhere, conv4 on a GPU (measured on a 2-core
    AMD EPYC and an H200, docs/benchmarks.md). Only ``"loop"`` whenever the inner steps
    are recomputed (``recompute_inner``) or the model has native batch norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from metaplug.errors import ConfigError
from metaplug_torch.functional import FunctionalModel
from metaplug_torch.models import execution_style, task_forwards

TaskFn = Callable[..., tuple[torch.Tensor, ...]]


def resolve(mode: str, model: FunctionalModel, device: torch.device | str = "cpu", *, recompute: bool = False) -> str:
    """The concrete mode for ``mode`` (``"auto"`` picks per model and device). ``recompute``
    (checkpointed second-order inner steps) runs in the per-task modes only: ``auto`` then
    picks ``loop`` and ``vectorized`` is an error."""
    if recompute and mode == "vectorized":
        raise ConfigError(
            "recompute_inner runs tasks one at a time: use batching 'auto', 'loop' or 'reference', not 'vectorized'"
        )
    if mode != "auto":
        return mode
    if recompute:
        return "loop"
    if model.has_native_batch_norm or (model.has_conv and torch.device(device).type == "cpu"):
        return "loop"
    return "vectorized"


def eligible(model: FunctionalModel, *, recompute: bool = False) -> tuple[str, ...]:
    """The modes ``auto`` may choose between for ``model``: ``"loop"`` and, unless the inner
    steps are recomputed or the model has native batch norm, ``"vectorized"`` (``"reference"``
    is the benchmarks' baseline, never chosen)."""
    if recompute or model.has_native_batch_norm:
        return ("loop",)
    return ("loop", "vectorized")


def map_tasks(
    fn: TaskFn,
    shared: object,
    tasks: Sequence[torch.Tensor],
    mode: str,
    *,
    backward_scale: float | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """``fn(shared, *task_slices)`` for every task, outputs stacked along a new first axis.

    ``fn`` returns a tuple of tensors. With ``backward_scale``, the first output
    (a task's loss) times the scale is back-propagated into the leaves of
    ``shared`` (accumulating in ``.grad``) chunk by chunk, so memory stays
    bounded. Returned outputs are detached.

    Each call of ``fn`` runs in :func:`~metaplug_torch.models.task_forwards` of its task's
    position in the batch (under ``vmap``: a batched index), so a model's training-time
    randomness is the same whatever the mode.
    """
    num_tasks = int(tasks[0].shape[0])
    if mode == "vectorized":
        size = chunk or num_tasks
        mapped = torch.func.vmap(_numbered(fn), in_dims=(None,) + (0,) * (len(tasks) + 1), randomness="error")
        numbers = torch.arange(num_tasks, device=tasks[0].device)
        pieces = []
        with execution_style("vectorized"):
            for start in range(0, num_tasks, size):
                out = mapped(shared, numbers[start : start + size], *(t[start : start + size] for t in tasks))
                pieces.append(_finish(out, backward_scale, lambda loss: loss.sum()))
        return tuple(torch.cat(parts) for parts in zip(*pieces, strict=True))
    pieces = []
    with execution_style(mode):
        for index in range(num_tasks):
            with task_forwards(index):
                out = fn(shared, *(t[index] for t in tasks))
            pieces.append(_finish(out, backward_scale, lambda loss: loss))
    return tuple(torch.stack(parts) for parts in zip(*pieces, strict=True))


def _numbered(fn: TaskFn) -> TaskFn:
    """``fn`` taking its task's number after ``shared``, run in :func:`task_forwards` of it."""

    def numbered(shared: object, number: torch.Tensor, *task: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with task_forwards(number):
            return fn(shared, *task)

    return numbered


def _finish(
    out: tuple[torch.Tensor, ...], scale: float | None, total: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    if scale is not None and out[0].requires_grad:
        (total(out[0]) * scale).backward()
    return tuple(o.detach() for o in out)


def no_grad_unless(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """``torch.no_grad()`` unless ``enabled``."""
    return contextlib.nullcontext() if enabled else torch.no_grad()

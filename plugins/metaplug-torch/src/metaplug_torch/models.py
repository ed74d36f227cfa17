"""The standard models ``mlp``, ``conv4`` and ``resnet12`` with the weight layout of ``docs/models.md``.

Every model is ``head(features(x))`` with submodules named ``features`` and
``head``, so algorithms can embed (ProtoNets), adapt only the head (ANIL) or
replace it (fine-tuning). Batch norm always uses the batch's own statistics.

A model learns that a forward pass is part of meta-training from :func:`meta_training`
(the algorithm's ``meta_train_step`` enters it) and which task of the meta-batch it runs
from :func:`task_forwards` (:func:`metaplug_torch.batching.map_tasks` enters it): only
``resnet12`` with ``drop_rate > 0`` reacts (dropout and DropBlock, drawn as
:mod:`metaplug.contract.dropblock` says).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from metaplug.contract import dropblock
from metaplug.contract.hyperparameters import Conv4Options, MLPOptions, ResNet12Options
from metaplug.contract.interfaces import ModelSpec
from metaplug.contract.options import Options
from metaplug.errors import ConfigError, suggest

BATCH_NORM_EPS = 1e-5

CHANNELS_LAST_ON_CPU = False
"""Run conv4 in ``channels_last`` memory order on CPU (``"loop"`` style only).

It was 15-25% faster per conv4 meta-step on CPU (2 cores, torch 2.13) until max-pooling
went through channels_last on its own (:class:`MaxPool2x2`); since then it saves nothing
(0.99x of the CPU time per step, docs/benchmarks.md), and PyTorch's channels_last
batch-norm kernels are about 10x less accurate in float32
(1e-6 instead of 1e-7 relative), which is enough to flip near-tied max-pool choices on
Omniglot's binary images and to break float32 parity with the TensorFlow plugin. Off by
default; set ``metaplug_torch.models.CHANNELS_LAST_ON_CPU = True`` for speed."""

EXECUTION_STYLES = ("vectorized", "loop", "reference")
_STYLE = contextvars.ContextVar("metaplug_torch_execution_style", default="loop")


@contextlib.contextmanager
def execution_style(style: str) -> Iterator[None]:
    """How the standard models run while active (the batching engine sets it).

    ``"loop"`` (the default): native ops (and, with :data:`CHANNELS_LAST_ON_CPU`,
    ``channels_last`` memory order on CPU). ``"vectorized"``: only ops that are exact
    under ``torch.func.vmap``: :class:`BatchNorm` uses elementary ops (the native
    batch-norm op's batching rule gives wrong second-order gradients, torch 2.13),
    and convolutions keep the default memory order (``vmap`` does not support
    ``channels_last``). ``"reference"``: native ops in the default memory order, as
    plain PyTorch code (learn2learn, higher) runs them.
    """
    if style not in EXECUTION_STYLES:
        raise ValueError(f"unknown execution style {style!r}")
    token = _STYLE.set(style)
    try:
        yield
    finally:
        _STYLE.reset(token)


@dataclasses.dataclass
class MetaTraining:
    """What the random draws of the meta-training forward passes now running depend on:
    the run's seed, the meta-training step, the task's position in the meta-batch and the
    number of forward passes that task has made so far."""

    seed: int
    step: int
    task: int | torch.Tensor = 0
    forwards: int = 0
    first: int = 0
    """The place in the meta-batch of the first task running inside (a worker's slice)."""

    def next_forward(self) -> tuple[int | torch.Tensor, int]:
        """The task and the number of the forward pass starting now (counted)."""
        number = self.forwards
        self.forwards += 1
        return self.task, number


_TRAINING: contextvars.ContextVar[MetaTraining | None] = contextvars.ContextVar(
    "metaplug_torch_meta_training", default=None
)


@contextlib.contextmanager
def meta_training(seed: int, step: int, first_task: int = 0) -> Iterator[MetaTraining]:
    """Mark the forward passes inside as meta-training at outer step ``step`` (0 for the
    first) of a run seeded with ``seed``: the only forwards where a model may be random
    (evaluation and adaptation run outside, deterministic). ``first_task`` is the place in
    the meta-batch of the first task running inside."""
    state = MetaTraining(int(seed), int(step), task=first_task, first=first_task)
    token = _TRAINING.set(state)
    try:
        yield state
    finally:
        _TRAINING.reset(token)


@contextlib.contextmanager
def task_forwards(task: int | torch.Tensor) -> Iterator[None]:
    """Inside :func:`meta_training`: the forward passes inside belong to task ``task`` of the
    tasks running (a tensor under ``vmap``; counted from :func:`meta_training`'s
    ``first_task``) and are numbered from 0. Outside it: nothing."""
    state = _TRAINING.get()
    if state is None:
        yield
        return
    token = _TRAINING.set(dataclasses.replace(state, task=state.first + task, forwards=0))
    try:
        yield
    finally:
        _TRAINING.reset(token)


def training_forward() -> tuple[MetaTraining, int | torch.Tensor, int] | None:
    """For a model starting a forward pass: ``(state, task, forward number)`` during
    meta-training (counting this forward), else ``None``."""
    state = _TRAINING.get()
    if state is None:
        return None
    task, number = state.next_forward()
    return state, task, number


class ReplayedForwards:
    """For computing again, later, the forward passes about to start (made at the next
    forward's point): a reusable context manager under which forward passes run as they
    would have there, in that execution style and meta-training state, numbered from that
    forward's number (so ResNet-12 draws the same dropout and DropBlock masks), whatever the
    context or thread they are recomputed in (:func:`metaplug_torch.inner.recomputed_steps`)."""

    def __init__(self) -> None:
        state = _TRAINING.get()
        self.state = None if state is None else dataclasses.replace(state)
        self.style = _STYLE.get()
        self.tokens: list[tuple[contextvars.Token[MetaTraining | None], contextvars.Token[str]]] = []

    def __enter__(self) -> None:
        fresh = None if self.state is None else dataclasses.replace(self.state)  # counts from here each time
        self.tokens.append((_TRAINING.set(fresh), _STYLE.set(self.style)))

    def __exit__(self, *exc: object) -> None:
        training, style = self.tokens.pop()
        _STYLE.reset(style)
        _TRAINING.reset(training)


def batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = BATCH_NORM_EPS,
    elementary: bool | None = None,
) -> torch.Tensor:
    """Normalise ``x`` (N, C, ...) over every axis but the channels with its own statistics."""
    if elementary is None:
        elementary = _STYLE.get() == "vectorized"
    axes = (0, *range(2, x.dim()))
    if not elementary:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # the channels_last CPU kernel's variance loses precision on inputs far from
            # zero; centring first helps (batch norm ignores the shift: same values and
            # gradients)
            x = x - x.detach().mean(axes, keepdim=True)
        if _fast_batch_norm_applies(x):
            return CPUBatchNorm.apply(x, weight, bias, eps)
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(axes, keepdim=True)
    centred = x - mean
    variance = centred.square().mean(axes, keepdim=True)
    return centred * torch.rsqrt(variance + eps) * weight.reshape(shape) + bias.reshape(shape)


def _fast_batch_norm_applies(x: torch.Tensor) -> bool:
    return (
        _loop_kernels_apply(x)
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and not _tracing()
    )


def _tracing() -> bool:
    """Whether the model is being traced (``torch.compile``, ``torch.export``, ONNX, TorchScript),
    which should see PyTorch's own operators."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


CENTRING_BYTES = 2 * 2**20
"""How much of the input :class:`CPUBatchNorm` centres at a time (a few examples of a conv4 map)."""


class CPUBatchNorm(torch.autograd.Function):
    """Batch norm with the batch's statistics, whose statistics are vectorised reductions.

    PyTorch's CPU kernel sums each channel in a scalar loop in double precision (torch
    2.13): on a conv4 query batch (75x64x28x28) its forward pass took 4.9 ms, where the
    mean alone takes 0.17 ms. Here the statistics are torch's vectorised reductions in the
    corrected two-pass algorithm (mean, then the mean and second moment of the centred
    input, a few examples at a time: errors against float64 as small as the kernel's), the
    output is the kernel's affine transform with those statistics, and the backward pass is
    PyTorch's own ``native_batch_norm_backward`` (differentiable again, so second order works
    exactly as with ``F.batch_norm``). About 2x faster forward and backward on conv4's maps
    (docs/benchmarks.md); values equal ``F.batch_norm``'s up to rounding."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        axes = (0, *range(2, x.dim()))
        shape = (1, -1) + (1,) * (x.dim() - 2)
        first = x.mean(axes)
        # the corrected two-pass algorithm (as precise as PyTorch's kernel), centred a few
        # examples at a time: the temporary stays in the cache instead of doubling the map
        total, squares = torch.zeros_like(first), torch.zeros_like(first)
        rows = max(1, CENTRING_BYTES // max(1, x[0].numel() * x.element_size()))
        shift = first.reshape(shape)
        for chunk in x.split(rows):
            centred = chunk - shift
            total += centred.sum(axes)
            squares += centred.square_().sum(axes)
        count = x.numel() // x.shape[1]
        correction = total / count
        variance = (squares / count - correction.square()).clamp_(min=0.0)
        mean = first + correction
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(variance + eps))
        ctx.eps = eps
        return F.batch_norm(x, mean, variance, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps, [needs[0], needs[1], needs[2]]
        )
        return grads[0], grads[1], grads[2], None


class BatchNorm(nn.Module):
    """Batch norm with batch statistics only (no running averages), ``eps = 1e-5``."""

    def __init__(self, channels: int, eps: float = BATCH_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return batch_norm(x, self.weight, self.bias, self.eps)


class DenseStack(nn.ModuleList):
    """``Linear -> ReLU`` for each layer (the MLP's ``features``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self:
            x = F.relu(layer(x))
        return x


class ConvBlock(nn.Module):
    """3x3 convolution, batch norm, ReLU, then 2x2 max-pooling (or a strided convolution)."""

    def __init__(self, in_channels: int, filters: int, pooling: str) -> None:
        super().__init__()
        self.pool = pooling == "max"
        self.conv = nn.Conv2d(in_channels, filters, 3, stride=1 if self.pool else 2, padding=1)
        self.norm = BatchNorm(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _memory_format(self.conv(x))
        x = self.norm(x)
        if not self.pool:
            return F.relu(x)
        if _STYLE.get() == "reference":  # the textbook order, as plain PyTorch code has it
            return F.max_pool2d(F.relu(x), 2)
        # max-pooling before ReLU gives the same values (both are monotone) on 4x fewer elements
        return F.relu(max_pool(x))


class ConvStack(nn.Sequential):
    """The conv4 ``features``: the blocks, then flattening channel-first.

    With :data:`CHANNELS_LAST_ON_CPU`, in the ``"loop"`` :func:`execution_style`,
    the input is switched to ``channels_last`` memory order on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_memory_format(x)).flatten(1)


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling of ``x`` (N, C, H, W); on the CPU in the ``"loop"`` style with
    :class:`MaxPool2x2` (bitwise the same values and gradients, faster), unless the caller
    runs ``torch.func`` transforms (which need an ``autograd.Function`` written for them) or
    asked for deterministic algorithms (which refuse ``max_unpool2d``, deterministic as it is
    here: the windows do not overlap)."""
    if (
        _loop_kernels_apply(x)
        and x.dim() == 4
        and not x.is_contiguous(memory_format=torch.channels_last)
        and not torch.are_deterministic_algorithms_enabled()
    ):
        return MaxPool2x2.apply(x)
    return F.max_pool2d(x, 2)


def _loop_kernels_apply(x: torch.Tensor) -> bool:
    """Whether the ``"loop"`` style's own CPU operators (:class:`MaxPool2x2`,
    :class:`CPUBatchNorm`, each ``autograd.Function``) may run on ``x``: on the CPU, in that
    style, outside ``torch.func`` transforms."""
    return x.device.type == "cpu" and _STYLE.get() == "loop" and not _functorch_active()


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``...) is running; the check
    ``torch.autograd.Function.apply`` itself makes (``True`` if torch no longer has it)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


class MaxPool2x2(torch.autograd.Function):
    """2x2 max-pooling found in ``channels_last`` memory order, with the gradient scattered
    back in the default order (``max_unpool2d``, differentiable again: second order works).

    PyTorch's default-order CPU kernel that records the maxima's indices was the largest
    single cost of a conv4 MAML step (a quarter of it, torch 2.13, one thread); the
    channels_last kernel with both copies is about 4x faster. Both pick the first maximum of
    each window, and every input element belongs to one window, so values and gradients
    are bitwise those of ``F.max_pool2d``. Pooling in channels_last order and leaving its
    gradient there instead made batch norm's backward pass on the mixed orders slower than
    all that was saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        pooled, indices = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, return_indices=True)
        ctx.save_for_backward(indices.contiguous())
        ctx.size = tuple(x.shape[-2:])
        return pooled.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (indices,) = ctx.saved_tensors
        return F.max_unpool2d(grad.contiguous(), indices, (2, 2), output_size=ctx.size)


def _memory_format(x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``channels_last`` order when :data:`CHANNELS_LAST_ON_CPU` applies, else unchanged.

    Applied to every convolution's output as well: with one input channel, input and
    kernel strides are ambiguous and the convolution would fall back to the default
    order, making the first block's batch norm and pooling several times slower.
    """
    if CHANNELS_LAST_ON_CPU and x.device.type == "cpu" and x.dim() == 4 and _STYLE.get() == "loop":
        return x.contiguous(memory_format=torch.channels_last)
    return x


class Shortcut(nn.Module):
    """A residual block's projection: 1x1 convolution (no bias), then batch norm."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.norm = BatchNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ResidualBlock(nn.Module):
    """ResNet-12's block: three 3x3 convolutions (padding 1, no bias) with batch norm and
    leaky ReLU after the first two; the sum with the :class:`Shortcut`, leaky ReLU, then
    2x2 max-pooling."""

    def __init__(self, in_channels: int, channels: int, leak: float) -> None:
        super().__init__()
        self.leak = leak
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.norm1 = BatchNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = BatchNorm(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm3 = BatchNorm(channels)
        self.shortcut = Shortcut(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x)), self.leak)
        h = F.leaky_relu(self.norm2(self.conv2(h)), self.leak)
        h = self.norm3(self.conv3(h)) + self.shortcut(x)
        if _STYLE.get() == "reference":  # the textbook order
            return F.max_pool2d(F.leaky_relu(h, self.leak), 2)
        # leaky ReLU is monotone: pooling first gives the same values on 4x fewer elements
        return F.leaky_relu(max_pool(h), self.leak)


@dataclasses.dataclass(frozen=True)
class DropOptions:
    """ResNet-12's training-time regularisation (:mod:`metaplug.contract.dropblock`)."""

    rate: float
    block_size: int
    ramp: int


def drop(
    x: torch.Tensor, options: DropOptions, seed: int, step: int, task: int | torch.Tensor, forward: int, block: int
) -> torch.Tensor:
    """Block ``block``'s output ``x`` (N, C, H, W) after dropout (blocks 0-1) or DropBlock
    (blocks 2-3) as :func:`metaplug.contract.dropblock.keep_mask` draws them."""
    n, c, h, w = x.shape
    key = dropblock.forward_key(seed, step, task, forward, block)
    if block not in dropblock.DROPBLOCK_BLOCKS:
        index = torch.arange(n * c * h * w, device=x.device).reshape(n, c, h, w)
        kept = dropblock.uniform32(key, index) >= dropblock.dropout_threshold(options.rate)
        return x * kept.to(x.dtype) * (1.0 / (1.0 - options.rate))
    b = dropblock.dropblock_size(options.block_size, h, w)
    index = torch.arange(n * c * (h - b + 1) * (w - b + 1), device=x.device).reshape(n, c, h - b + 1, w - b + 1)
    threshold = dropblock.dropblock_threshold(options.rate, h, w, options.block_size, options.ramp, step)
    seeds = (dropblock.uniform32(key, index) < threshold).to(x.dtype)
    covered = F.max_pool2d(F.pad(seeds, (b - 1,) * 4), b, stride=1)
    kept = 1.0 - covered
    return x * kept * (kept.numel() / kept.sum().clamp(min=1.0))


class ResidualStack(nn.Sequential):
    """The resnet12 ``features``: the blocks, then the mean over the spatial axes.

    With ``drop`` (``drop_rate > 0``), each block's output in a meta-training forward pass
    goes through :func:`drop`; otherwise the blocks run as they are."""

    def __init__(self, *blocks: nn.Module, drop: DropOptions | None = None) -> None:
        super().__init__(*blocks)
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = training_forward() if self.drop is not None else None
        for number, block in enumerate(self):
            x = block(x)
            if training is not None and self.drop is not None:
                state, task, forward = training
                x = drop(x, self.drop, state.seed, state.step, task, forward, number)
        return x.mean((2, 3))


class FeaturesAndHead(nn.Module):
    """``head(features(x))``."""

    def __init__(self, features: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def mlp(input_shape: Sequence[int], output_size: int, hidden: Sequence[int] = (40, 40)) -> FeaturesAndHead:
    """The sinusoid MLP (1-40-40-1 by default)."""
    sizes = [_flat_size(input_shape), *[int(h) for h in hidden]]
    if any(s < 1 for s in sizes):
        raise ConfigError(f"mlp hidden sizes must be positive, got {tuple(hidden)}")
    layers = DenseStack(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    return FeaturesAndHead(layers, nn.Linear(sizes[-1], output_size))


def conv4(input_shape: Sequence[int], output_size: int, filters: int = 64, pooling: str = "max") -> FeaturesAndHead:
    """Four conv blocks and a linear head (Vinyals et al. 2016; Finn et al. 2017)."""
    if pooling not in ("max", "stride"):
        raise ConfigError(f"conv4 pooling must be 'max' or 'stride', got {pooling!r}")
    if len(input_shape) != 3:
        raise ConfigError(f"conv4 needs (channels, height, width) inputs, got input_shape {tuple(input_shape)}")
    channels, height, width = (int(s) for s in input_shape)
    blocks = ConvStack(*(ConvBlock(channels if i == 0 else filters, filters, pooling) for i in range(4)))
    for _ in range(4):  # floor(x / 2) for pooling; ceil(x / 2) for stride 2 with padding 1
        height, width = (height // 2, width // 2) if pooling == "max" else ((height + 1) // 2, (width + 1) // 2)
    if height < 1 or width < 1:
        raise ConfigError(f"conv4 input {tuple(input_shape)} is too small for four halvings")
    return FeaturesAndHead(blocks, nn.Linear(filters * height * width, output_size))


RESNET12_CHANNELS = (64, 160, 320, 640)


def resnet12(
    input_shape: Sequence[int],
    output_size: int,
    channels: Sequence[int] = RESNET12_CHANNELS,
    leak: float = 0.1,
    drop_rate: float = 0.0,
    dropblock_size: int = 5,
    dropblock_ramp: int = 20000,
) -> FeaturesAndHead:
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): four residual blocks, global
    average pooling, a linear head; with ``drop_rate > 0``, MetaOptNet's dropout and
    DropBlock (Ghiasi et al. 2018) in meta-training forward passes."""
    widths = resnet12_channels(channels)
    if len(input_shape) != 3:
        raise ConfigError(f"resnet12 needs (channels, height, width) inputs, got input_shape {tuple(input_shape)}")
    if min(int(s) for s in input_shape[1:]) < 16:
        raise ConfigError(f"resnet12 input {tuple(input_shape)} is too small for four halvings (at least 16x16)")
    sizes = [int(input_shape[0]), *widths]
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ConfigError(f"resnet12 drop_rate must be in [0, 1), got {drop_rate}")
    if int(dropblock_size) < 1 or int(dropblock_ramp) < 1:
        raise ConfigError(
            f"resnet12 dropblock_size and dropblock_ramp must be positive, got {dropblock_size} and {dropblock_ramp}"
        )
    regularise = DropOptions(float(drop_rate), int(dropblock_size), int(dropblock_ramp)) if drop_rate > 0 else None
    blocks = ResidualStack(*(ResidualBlock(a, b, float(leak)) for a, b in itertools.pairwise(sizes)), drop=regularise)
    return FeaturesAndHead(blocks, nn.Linear(widths[-1], output_size))


def resnet12_channels(channels: Sequence[int]) -> tuple[int, ...]:
    """The four block widths of ``channels``, checked."""
    widths = tuple(int(c) for c in channels)
    if len(widths) != 4 or any(c < 1 for c in widths):
        raise ConfigError(f"resnet12 channels must be four positive widths, got {tuple(channels)}")
    return widths


BUILDERS: dict[str, Callable[..., FeaturesAndHead]] = {"mlp": mlp, "conv4": conv4, "resnet12": resnet12}


def build(spec: ModelSpec) -> FeaturesAndHead:
    """The standard model that ``spec`` names, freshly initialised (PyTorch's default init)."""
    if spec.name not in BUILDERS:
        raise ConfigError(f"unknown model {spec.name!r}.{suggest(spec.name, BUILDERS)} Models: {', '.join(BUILDERS)}")
    builder = BUILDERS[spec.name]
    if spec.output_size < 1:
        raise ConfigError(f"output_size must be positive, got {spec.output_size}")
    return builder(tuple(spec.input_shape), int(spec.output_size), **spec.options)


def _flat_size(shape: Sequence[int]) -> int:
    size = 1
    for s in shape:
        size *= int(s)
    return size


# -- register_models: the classes the plugin registers (metaplug.contract.interfaces.ModelBuilder)


class StandardModel:
    """A standard model as ``register_models`` names it: ``build(backend, spec)`` builds the
    :data:`BUILDERS` entry ``name`` on the backend's device, with the options of ``Options``
    (declared once for every backend in :mod:`metaplug.contract.hyperparameters`).
    :meth:`metaplug_torch.backend.Backend.build_model` builds through these classes too."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]]

    @classmethod
    def build(cls, backend: Any, spec: ModelSpec) -> FeaturesAndHead:
        options = cls.Options.parse(spec.options, owner=f"model {cls.name!r}").as_dict()
        model = build(dataclasses.replace(spec, name=cls.name, options=options))
        device = getattr(backend, "device", None)
        return model if device is None else model.to(device)


class MLPBuilder(StandardModel):
    """The sinusoid MLP: ``Linear -> ReLU`` per hidden size, then a linear head (:func:`mlp`)."""

    name = "mlp"
    Options = MLPOptions


class Conv4Builder(StandardModel):
    """Four blocks of 3x3 convolution, batch norm, ReLU and 2x2 max-pooling, then a linear head (:func:`conv4`)."""

    name = "conv4"
    Options = Conv4Options


class ResNet12Builder(StandardModel):
    """Four residual blocks, global average pooling, a linear head (:func:`resnet12`)."""

    name = "resnet12"
    Options = ResNet12Options


MODELS: dict[str, type[StandardModel]] = {c.name: c for c in (MLPBuilder, Conv4Builder, ResNet12Builder)}
"""The registered classes by model name."""


def builder(name: str) -> type[StandardModel]:
    """The class that builds the standard model ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}.{suggest(name, MODELS)} Models: {', '.join(MODELS)}")
    return MODELS[name]

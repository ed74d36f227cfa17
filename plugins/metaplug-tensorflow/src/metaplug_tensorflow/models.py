"""The standard models as pure functions of a list of weight tensors.

A :class:`FunctionalModel` owns its weights as ``tf.Variable`` objects (the
meta-parameters) but computes only from the tensors it is given, so an inner
loop can run the same network on adapted weights without assigning to any
variable (assignment would cut the gradient). Every forward takes a leading task
axis: inputs are ``(T, N, *example)`` in TensorFlow's layout (channels last) and
batch norm normalises each task with its own statistics.

Weights come in two forms:

* shared: one tensor per weight, used by every task (``per_task=False``);
* per task: each weight carries a leading task axis ``T`` (``per_task=True``),
  as the inner loop produces. These run either as one vectorized computation
  (``vectorized=True``: batched matrix products for the MLP, ``tf.vectorized_map``
  for conv4 and resnet12) or as a loop over the tasks unrolled in the graph.

Names, shapes and initialisation follow ``docs/models.md``; weights are stored in
TensorFlow's layout (see :mod:`metaplug_tensorflow.layout`).

A model learns that a forward pass is part of meta-training from :func:`meta_training`
(the algorithm's ``meta_train_step`` enters it around its compiled step) and which task
of the meta-batch its first task is from :func:`task_forwards` (the algorithm's
``map_tasks`` enters it): only ``resnet12`` with ``drop_rate > 0`` reacts (dropout and
DropBlock, drawn as :mod:`metaplug.contract.dropblock` says).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from metaplug.contract import dropblock
from metaplug.contract.hyperparameters import Conv4Options, MLPOptions, ResNet12Options
from metaplug.contract.interfaces import ModelSpec
from metaplug.contract.options import Options
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf

BATCH_NORM_EPS = 1e-5
PADDING_1 = [[0, 0], [1, 1], [1, 1], [0, 0]]
HEAD = ("head.weight", "head.bias")


@dataclass
class MetaTraining:
    """What the random draws of the meta-training forward passes being traced depend on:
    the run's seed, the meta-training step (the outer optimizer's step variable, read in
    the graph), the position in the meta-batch of the forward's first task and the number
    of forward passes those tasks have made so far."""

    seed: int
    step: tf.Variable | tf.Tensor
    task: int | tf.Tensor = 0
    forwards: int = 0
    first: int | tf.Tensor = 0
    """The place in the meta-batch of the first task traced here (a device's slice of it
    starts later than 0: :mod:`metaplug_tensorflow.mirrored`)."""
    offset: int | tf.Tensor = 0
    """Added to the forward numbers: an int64 tensor in the body of a loop traced once and
    run several times (:class:`LoopForwards`)."""

    def next_forward(self) -> tuple[int | tf.Tensor, int | tf.Tensor]:
        """The first task and the number of the forward pass starting now (counted)."""
        number = self.forwards
        self.forwards += 1
        return self.task, self.offset + number


_TRAINING: contextvars.ContextVar[MetaTraining | None] = contextvars.ContextVar(
    "metaplug_tensorflow_meta_training", default=None
)


@contextlib.contextmanager
def meta_training(seed: int, step: tf.Variable | tf.Tensor, first_task: int | tf.Tensor = 0) -> Iterator[MetaTraining]:
    """Mark the forward passes traced inside as meta-training at outer step ``step`` (0 for
    the first; a variable read when the graph runs) of a run seeded with ``seed``: the only
    forwards where a model may be random (evaluation and adaptation are traced outside).
    ``first_task`` is the place in the meta-batch of the first task traced inside."""
    state = MetaTraining(int(seed), step, task=first_task, first=first_task)
    token = _TRAINING.set(state)
    try:
        yield state
    finally:
        _TRAINING.reset(token)


@contextlib.contextmanager
def task_forwards(task: int | tf.Tensor) -> Iterator[None]:
    """Inside :func:`meta_training`: the forward passes traced inside start at task ``task``
    of the tasks traced (a loop's index tensor, or 0 for the whole batch; counted from
    :func:`meta_training`'s ``first_task``) and are numbered from 0. Outside it: nothing."""
    state = _TRAINING.get()
    if state is None:
        yield
        return
    token = _TRAINING.set(dataclasses.replace(state, task=state.first + task, forwards=0))
    try:
        yield
    finally:
        _TRAINING.reset(token)


def training_forward() -> tuple[MetaTraining, int | tf.Tensor, int | tf.Tensor] | None:
    """For a model starting a forward pass: ``(state, first task, forward number)`` during
    meta-training (counting this forward), else ``None``."""
    state = _TRAINING.get()
    if state is None:
        return None
    task, number = state.next_forward()
    return state, task, number


class ReplayedForwards:
    """For tracing again, later, the forward passes about to be traced (made at the next
    forward's point): a reusable context manager under which forward passes are traced with
    that meta-training state, numbered from that forward's number (so ResNet-12 draws the
    same dropout and DropBlock masks), wherever they are traced again
    (:func:`metaplug_tensorflow.algorithms.base.recomputed`)."""

    def __init__(self) -> None:
        state = _TRAINING.get()
        self.state = None if state is None else dataclasses.replace(state)
        self.tokens: list[contextvars.Token[MetaTraining | None]] = []

    def __enter__(self) -> None:
        fresh = None if self.state is None else dataclasses.replace(self.state)  # counts from here each time
        self.tokens.append(_TRAINING.set(fresh))

    def __exit__(self, *exc: object) -> None:
        _TRAINING.reset(self.tokens.pop())


class LoopForwards:
    """Numbers the forward passes of a ``tf.while_loop`` body (traced once, run ``steps``
    times) as the unrolled loop would: iteration ``i`` continues from the number the next
    forward had before the loop, plus ``i`` times the forwards an iteration makes
    (:attr:`per_iteration`). Created before the loop, which reads the meta-training step
    there (a variable read inside the loop's gradient is not threaded through it).

    ``with numbering.iteration(i):`` around the body's tracing; afterwards :attr:`made` is
    the number of forwards the traced body made (trace again if it is not
    :attr:`per_iteration`); :meth:`finish` counts the loop's forwards for those after it."""

    def __init__(self, per_iteration: int = 1) -> None:
        self.state = _TRAINING.get()
        self.step = None if self.state is None else tf.convert_to_tensor(self.state.step)
        self.per_iteration, self.made = per_iteration, per_iteration
        self.tokens: list[contextvars.Token[MetaTraining | None]] = []
        self.index: tf.Tensor | None = None

    def iteration(self, index: tf.Tensor) -> LoopForwards:
        self.index = index
        return self

    def __enter__(self) -> None:
        state = self.state
        if state is not None and self.index is not None:
            start = state.offset + state.forwards + tf.cast(self.index, tf.int64) * self.per_iteration
            state = dataclasses.replace(state, step=self.step, forwards=0, offset=start)
        self.tokens.append(_TRAINING.set(state))

    def __exit__(self, *exc: object) -> None:
        state = _TRAINING.get()
        self.made = self.per_iteration if state is None else state.forwards
        _TRAINING.reset(self.tokens.pop())

    def finish(self, steps: int) -> None:
        """Count the ``steps`` iterations' forwards as made."""
        if self.state is not None:
            self.state.forwards += steps * self.per_iteration


def dense(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, per_task: bool) -> tf.Tensor:
    """``x @ w + b`` for ``x`` of shape ``(T, N, in)``; ``w`` is ``(in, out)`` or ``(T, in, out)``."""
    if per_task:
        return tf.matmul(x, w) + b[:, None, :]
    return tf.einsum("tni,io->tno", x, w) + b


def leading_dims(x: tf.Tensor) -> tuple[int | tf.Tensor, int | tf.Tensor]:
    """Task and example counts of ``x``, static where known (a served model's batch is not)."""
    dynamic = tf.shape(x)
    return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i] for i in range(2))


def batch_norm(h: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Normalise ``(T, N, H, W, C)`` over each task's examples and pixels (biased variance).

    Written from elementary ops: ``tf.nn.moments`` stops the gradient through the
    mean inside the variance, which leaves first derivatives right but makes
    second derivatives (second-order MAML) wrong. The statistics are the corrected two-pass
    algorithm: TensorFlow's float32 mean of a channel far from zero (a convolution's bias)
    misses by up to ``1e-5`` of its spread even taken as :func:`task_mean` does, and the mean
    of the centred values is that miss, found to rounding; it is taken out of the variance
    and, through the per-channel shift, of the output (not subtracted from the whole map).
    Being zero whatever ``h``, it has zero derivatives of every order, so it is held
    constant. Float32 batch norm is then at least as accurate as torch's (docs/benchmarks.md,
    "Float32 batch norm"); float64 is unchanged to rounding. The scale and shift are folded
    into one factor and one offset per channel, so the output is one product and one sum.
    """
    centred = h - task_mean(h)
    miss = tf.stop_gradient(task_mean(centred))
    variance = task_mean(tf.square(centred)) - tf.square(miss)
    factor = tf.math.rsqrt(variance + BATCH_NORM_EPS) * scale
    return centred * factor + (shift - miss * factor)


def task_mean(h: tf.Tensor) -> tf.Tensor:
    """The mean of ``(T, N, H, W, C)`` over each task's examples and pixels, as ``(T, 1, 1, 1, C)``.

    Taken over each example's pixels first, then over the examples: TensorFlow's CPU kernel
    adds up a reduced axis that is not the innermost one value after the other, and one
    float32 mean over all ``N * H * W`` values (62 720 per channel for 80 Omniglot images)
    misses by up to ``1e-4`` of the channel's spread, 50 times torch's batch norm. Every
    example has the same number of pixels: the same mean, with the same derivatives.
    """
    return tf.reduce_mean(tf.reduce_mean(h, axis=[2, 3], keepdims=True), axis=1, keepdims=True)


@dataclass
class FunctionalModel:
    """A standard model: named weights (``tf.Variable``, TensorFlow layout) and pure forwards.

    ``names[i]`` is the shared-layout name of ``variables[i]``; the head's two
    weights come last.
    """

    spec: ModelSpec
    names: tuple[str, ...]
    variables: list[tf.Variable] = field(repr=False)

    has_parts = True
    """Whether the model splits into features and a head (every standard model does)."""
    linear_head = True
    """Whether the head is ``x @ weight + bias`` (every standard model's is)."""

    @property
    def head_index(self) -> int:
        """Index of the first head weight in :attr:`names`."""
        return len(self.names) - len(HEAD)

    def require_parts(self, algorithm: str) -> None:
        """Raise a :class:`~metaplug.errors.ConfigError` naming ``algorithm`` when the model
        has no separate features and head (never for a standard model)."""

    def embed(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, per_task: bool = False, vectorized: bool = True
    ) -> tf.Tensor:
        """Feature vectors ``(T, N, F)`` of inputs ``(T, N, *example)``; ``params`` are the
        feature weights (``params[:head_index]`` of the full list)."""
        if not per_task:
            return self._features(list(params), x, False)
        if vectorized:
            return self._features_vectorized(list(params), x)
        num_tasks = x.shape[0]
        columns = [tf.unstack(p, num=num_tasks) for p in params]
        rows = [self._features([c[t][None] for c in columns], x[t : t + 1], True) for t in range(num_tasks)]
        return tf.concat(rows, axis=0)

    def head(self, params: Sequence[tf.Tensor], h: tf.Tensor, per_task: bool = False) -> tf.Tensor:
        """Outputs ``(T, N, out)`` of the linear head on features ``(T, N, F)``."""
        weight, bias = params
        return dense(h, weight, bias, per_task)

    def __call__(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, per_task: bool = False, vectorized: bool = True
    ) -> tf.Tensor:
        """Outputs ``(T, N, out)`` from the full list of weights."""
        k = self.head_index
        h = self.embed(params[:k], x, per_task, vectorized)
        return self.head(params[k:], h, per_task)

    def _features(self, params: list[tf.Tensor], x: tf.Tensor, per_task: bool) -> tf.Tensor:
        raise NotImplementedError

    def _features_vectorized(self, params: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        return self._features(params, x, True)


class MLP(FunctionalModel):
    """``Linear -> ReLU`` per hidden size, then the linear head (Finn et al.'s 1-40-40-1)."""

    def _features(self, params: list[tf.Tensor], x: tf.Tensor, per_task: bool) -> tf.Tensor:
        tasks, n = leading_dims(x)
        h = tf.reshape(x, [tasks, n, -1])
        for i in range(0, len(params), 2):
            h = tf.nn.relu(dense(h, params[i], params[i + 1], per_task))
        return h


class ImageModel(FunctionalModel):
    """A convolutional model; per-task weights run one task at a time under ``tf.vectorized_map``."""

    def _features_vectorized(self, params: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        def one_task(args: tuple[list[tf.Tensor], tf.Tensor]) -> tf.Tensor:
            weights, inputs = args
            return self._features(list(weights), inputs[None], False)[0]

        return tf.vectorized_map(one_task, (params, x))


class Conv4(ImageModel):
    """Four blocks of 3x3 convolution (padding 1), batch norm, ReLU and 2x2 max-pooling
    (or stride 2 instead of pooling); flattened channel-first before the head."""

    @property
    def stride(self) -> int:
        return 2 if self.spec.options.get("pooling", "max") == "stride" else 1

    def _features(self, params: list[tf.Tensor], x: tf.Tensor, per_task: bool) -> tf.Tensor:
        if per_task:  # a task axis of length 1 on every weight
            params = [p[0] for p in params]
        tasks, n = leading_dims(x)
        h = tf.reshape(x, [tasks * n, *x.shape[2:]])
        for i in range(0, len(params), 4):
            kernel, bias, scale, shift = params[i : i + 4]
            h = tf.nn.conv2d(h, kernel, self.stride, PADDING_1) + bias
            h = tf.reshape(h, [tasks, n, *h.shape[1:]])
            h = tf.nn.relu(batch_norm(h, scale, shift))
            h = tf.reshape(h, [tasks * n, *h.shape[2:]])
            if self.stride == 1:
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.transpose(h, [0, 3, 1, 2])  # channel-first flatten, as the shared layout
        return tf.reshape(h, [tasks, n, -1])


def leaky_relu(h: tf.Tensor, leak: float) -> tf.Tensor:
    """``h`` where positive, else ``leak * h`` (PyTorch's gradient at 0: ``leak``).

    Not ``tf.nn.leaky_relu``, whose slope is a float32 attribute (0.1 becomes
    0.10000000149 in float64 models)."""
    return tf.where(h > 0, h, h * tf.constant(leak, h.dtype))


RESNET12_BLOCK = 12
"""Weights per ResNet-12 block: three convolutions with their norms' scale and shift, then
the shortcut's convolution, scale and shift."""


@dataclass(frozen=True)
class Draw:
    """One meta-training forward pass's random draws: ``tasks`` (int64 ``(T,)``) are the
    meta-batch positions of its tasks."""

    seed: int
    step: tf.Tensor
    forward: int | tf.Tensor
    tasks: tf.Tensor


def drop(
    h: tf.Tensor, tasks: int | tf.Tensor, n: int | tf.Tensor, draw: Draw, block: int, spec: ModelSpec
) -> tf.Tensor:
    """Block ``block``'s output ``h`` (T * N, H, W, C) after dropout (blocks 0-1) or
    DropBlock (blocks 2-3) as :func:`metaplug.contract.dropblock.keep_mask` draws them."""
    rate = float(spec.options["drop_rate"])
    size, ramp = int(spec.options.get("dropblock_size", 5)), int(spec.options.get("dropblock_ramp", 20000))
    height, width, channels = h.shape[1:]
    shift = tf.bitwise.right_shift
    keys = dropblock.forward_key(draw.seed, draw.step, draw.tasks, draw.forward, block, shift)
    keys = tf.reshape(keys, [-1, 1, 1, 1, 1])
    b = dropblock.dropblock_size(size, height, width) if block in dropblock.DROPBLOCK_BLOCKS else 1
    rows, cols = height - b + 1, width - b + 1
    # element indices in channel-first order (as the reference), laid out channels last
    grid = tf.reshape(
        tf.range(tf.cast(n, tf.int64) * channels * rows * cols, dtype=tf.int64), [n, channels, rows, cols]
    )
    numbers = dropblock.uniform32(keys, tf.transpose(grid, [0, 2, 3, 1])[None], shift)  # (T, N, rows, cols, C)
    out = tf.reshape(h, [tasks, n, height, width, channels])
    if block not in dropblock.DROPBLOCK_BLOCKS:
        kept = tf.cast(numbers >= dropblock.dropout_threshold(rate), h.dtype)
        return tf.reshape(out * kept * tf.constant(1.0 / (1.0 - rate), h.dtype), tf.shape(h))
    scale = dropblock.dropblock_threshold_scale(rate, height, width, size, ramp)
    reached = tf.cast(tf.minimum(tf.cast(draw.step, tf.int64) + 1, ramp), tf.float64)
    threshold = tf.cast(tf.floor(reached * tf.constant(scale, tf.float64)), tf.int64)
    seeds = tf.reshape(tf.cast(numbers < threshold, h.dtype), [-1, rows, cols, channels])
    padded = tf.pad(seeds, [[0, 0], [b - 1, b - 1], [b - 1, b - 1], [0, 0]])
    covered = tf.nn.max_pool2d(padded, b, 1, "VALID")
    kept = tf.reshape(1.0 - covered, [tasks, n, height, width, channels])
    count = tf.cast(tf.size(kept[0]), h.dtype)
    total = tf.maximum(tf.reduce_sum(kept, axis=[1, 2, 3, 4], keepdims=True), tf.constant(1.0, h.dtype))
    return tf.reshape(out * kept * (count / total), tf.shape(h))


class ResNet12(ImageModel):
    """Four residual blocks (three 3x3 convolutions without bias, padding 1, batch norm,
    leaky ReLU after the first two; a 1x1 convolution and batch norm as shortcut; sum,
    leaky ReLU, 2x2 max-pooling), then the mean over the pixels. With ``drop_rate > 0``,
    each block's output in a meta-training forward pass goes through :func:`drop`."""

    def embed(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, per_task: bool = False, vectorized: bool = True
    ) -> tf.Tensor:
        training = training_forward() if float(self.spec.options.get("drop_rate", 0.0)) > 0 else None
        if training is None:
            return super().embed(params, x, per_task, vectorized)
        state, first, forward = training
        tasks = tf.cast(first, tf.int64) + tf.range(tf.shape(x, out_type=tf.int64)[0])
        step = tf.convert_to_tensor(state.step)
        if not per_task:
            return self._features(list(params), x, False, Draw(state.seed, step, forward, tasks))
        if vectorized:

            def one_task(args: tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]) -> tf.Tensor:
                weights, inputs, task = args
                return self._features(list(weights), inputs[None], False, Draw(state.seed, step, forward, task[None]))[
                    0
                ]

            return tf.vectorized_map(one_task, (list(params), x, tasks))
        num_tasks = x.shape[0]
        columns = [tf.unstack(p, num=num_tasks) for p in params]
        rows = [
            self._features(
                [c[t][None] for c in columns], x[t : t + 1], True, Draw(state.seed, step, forward, tasks[t : t + 1])
            )
            for t in range(num_tasks)
        ]
        return tf.concat(rows, axis=0)

    def _features(self, params: list[tf.Tensor], x: tf.Tensor, per_task: bool, draw: Draw | None = None) -> tf.Tensor:
        if per_task:  # a task axis of length 1 on every weight
            params = [p[0] for p in params]
        leak = float(self.spec.options.get("leak", 0.1))
        tasks, n = leading_dims(x)

        def norm(h: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
            pixels = h.shape[1:]
            h = batch_norm(tf.reshape(h, [tasks, n, *pixels]), scale, shift)
            return tf.reshape(h, [tasks * n, *pixels])

        h = tf.reshape(x, [tasks * n, *x.shape[2:]])
        for i in range(0, len(params), RESNET12_BLOCK):
            k1, s1, b1, k2, s2, b2, k3, s3, b3, k0, s0, b0 = params[i : i + RESNET12_BLOCK]
            out = leaky_relu(norm(tf.nn.conv2d(h, k1, 1, PADDING_1), s1, b1), leak)
            out = leaky_relu(norm(tf.nn.conv2d(out, k2, 1, PADDING_1), s2, b2), leak)
            out = norm(tf.nn.conv2d(out, k3, 1, PADDING_1), s3, b3) + norm(tf.nn.conv2d(h, k0, 1, "VALID"), s0, b0)
            # leaky ReLU is monotone: pooling first gives the same values on 4x fewer elements
            h = leaky_relu(tf.nn.max_pool2d(out, 2, 2, "VALID"), leak)
            if draw is not None:
                h = drop(h, tasks, n, draw, i // RESNET12_BLOCK, self.spec)
        return tf.reshape(tf.reduce_mean(h, axis=[1, 2]), [tasks, n, -1])


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """PyTorch's default initialisation of linear and convolution layers: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def _mlp_weights(spec: ModelSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    hidden = tuple(spec.options.get("hidden", (40, 40)))
    if not hidden or any(int(h) < 1 for h in hidden):
        raise ConfigError(f"mlp option 'hidden' must be positive layer sizes, got {hidden!r}")
    width = int(np.prod(spec.input_shape))
    weights: dict[str, np.ndarray] = {}
    for i, size in enumerate(hidden):
        weights[f"features.{i}.weight"] = _uniform(rng, (width, size), width)
        weights[f"features.{i}.bias"] = _uniform(rng, (size,), width)
        width = int(size)
    weights["head.weight"] = _uniform(rng, (width, spec.output_size), width)
    weights["head.bias"] = _uniform(rng, (spec.output_size,), width)
    return weights


def conv4_feature_size(input_shape: tuple[int, ...], filters: int, pooling: str) -> int:
    """Length of conv4's flattened features for channel-first ``input_shape``."""
    height, width = input_shape[1:]
    for _ in range(4):
        if pooling == "stride":
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        else:
            height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ConfigError(f"conv4 needs images of at least 16x16 pixels, got {input_shape[1:]}")
    return filters * height * width


def _conv4_weights(spec: ModelSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if len(spec.input_shape) != 3:
        raise ConfigError(f"conv4 takes images (channels, height, width), got input shape {spec.input_shape}")
    filters = int(spec.options.get("filters", 64))
    pooling = spec.options.get("pooling", "max")
    if pooling not in ("max", "stride"):
        raise ConfigError(f"conv4 option 'pooling' must be 'max' or 'stride', got {pooling!r}")
    if filters < 1:
        raise ConfigError(f"conv4 option 'filters' must be positive, got {filters}")
    channels = spec.input_shape[0]
    weights: dict[str, np.ndarray] = {}
    for i in range(4):
        fan_in = channels * 9
        weights[f"features.{i}.conv.weight"] = _uniform(rng, (3, 3, channels, filters), fan_in)
        weights[f"features.{i}.conv.bias"] = _uniform(rng, (filters,), fan_in)
        weights[f"features.{i}.norm.weight"] = np.ones(filters)
        weights[f"features.{i}.norm.bias"] = np.zeros(filters)
        channels = filters
    size = conv4_feature_size(tuple(spec.input_shape), filters, pooling)
    weights["head.weight"] = _uniform(rng, (size, spec.output_size), size)
    weights["head.bias"] = _uniform(rng, (spec.output_size,), size)
    return weights


def _resnet12_weights(spec: ModelSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if len(spec.input_shape) != 3:
        raise ConfigError(f"resnet12 takes images (channels, height, width), got input shape {spec.input_shape}")
    if min(spec.input_shape[1:]) < 16:
        raise ConfigError(f"resnet12 needs images of at least 16x16 pixels, got {spec.input_shape[1:]}")
    given = tuple(spec.options.get("channels", (64, 160, 320, 640)))
    widths = tuple(int(c) for c in given)
    if len(widths) != 4 or any(c < 1 for c in widths):
        raise ConfigError(f"resnet12 option 'channels' must be four positive widths, got {given!r}")
    channels = spec.input_shape[0]
    weights: dict[str, np.ndarray] = {}
    for i, width in enumerate(widths):
        block = f"features.{i}"
        for j, inputs in enumerate((channels, width, width), start=1):
            weights[f"{block}.conv{j}.weight"] = _uniform(rng, (3, 3, inputs, width), inputs * 9)
            weights[f"{block}.norm{j}.weight"] = np.ones(width)
            weights[f"{block}.norm{j}.bias"] = np.zeros(width)
        weights[f"{block}.shortcut.conv.weight"] = _uniform(rng, (1, 1, channels, width), channels)
        weights[f"{block}.shortcut.norm.weight"] = np.ones(width)
        weights[f"{block}.shortcut.norm.bias"] = np.zeros(width)
        channels = width
    weights["head.weight"] = _uniform(rng, (channels, spec.output_size), channels)
    weights["head.bias"] = _uniform(rng, (spec.output_size,), channels)
    return weights


BUILDERS = {
    "mlp": (MLP, _mlp_weights),
    "conv4": (Conv4, _conv4_weights),
    "resnet12": (ResNet12, _resnet12_weights),
}


def build(spec: ModelSpec, rng: np.random.Generator, dtype: tf.DType) -> FunctionalModel:
    """A freshly initialised standard model with weights drawn from ``rng``."""
    if spec.name not in BUILDERS:
        raise ConfigError(f"unknown model {spec.name!r} for backend 'tensorflow'; available: {', '.join(BUILDERS)}")
    if spec.output_size < 1:
        raise ConfigError(f"model output size must be positive, got {spec.output_size}")
    cls, init = BUILDERS[spec.name]
    weights = init(spec, rng)
    variables = [tf.Variable(w, dtype=dtype, name=n.replace(".", "_")) for n, w in weights.items()]
    return cls(spec, tuple(weights), variables)


# -- register_models: the classes the plugin registers (metaplug.contract.interfaces.ModelBuilder)


class StandardModel:
    """A standard model as ``register_models`` names it: ``build(backend, spec)`` builds the
    :data:`BUILDERS` entry ``name`` from the backend's generator, in its dtype and on its
    device, with the options of ``Options`` (declared once for every backend in
    :mod:`metaplug.contract.hyperparameters`).
    :meth:`metaplug_tensorflow.backend.Backend.build_model` builds through these classes too."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]]

    @classmethod
    def build(cls, backend: Any, spec: ModelSpec) -> FunctionalModel:
        options = cls.Options.parse(spec.options, owner=f"model {cls.name!r}").as_dict()
        if callable(getattr(backend, "fit_threads", None)):  # before TensorFlow's runtime starts
            backend.fit_threads(dataclasses.replace(spec, name=cls.name, options=options))
        with backend.scope():
            return build(dataclasses.replace(spec, name=cls.name, options=options), backend.rng, backend.dtype)


class MLPBuilder(StandardModel):
    """The sinusoid MLP: ``Linear -> ReLU`` per hidden size, then a linear head (:class:`MLP`)."""

    name = "mlp"
    Options = MLPOptions


class Conv4Builder(StandardModel):
    """Four blocks of 3x3 convolution, batch norm, ReLU and 2x2 max-pooling, then a linear head (:class:`Conv4`)."""

    name = "conv4"
    Options = Conv4Options


class ResNet12Builder(StandardModel):
    """Four residual blocks, global average pooling, a linear head (:class:`ResNet12`)."""

    name = "resnet12"
    Options = ResNet12Options


MODELS: dict[str, type[StandardModel]] = {c.name: c for c in (MLPBuilder, Conv4Builder, ResNet12Builder)}
"""The registered classes by model name."""


def builder(name: str) -> type[StandardModel]:
    """The class that builds the standard model ``name``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r} for backend 'tensorflow'; available: {', '.join(MODELS)}")
    return MODELS[name]

"""The ``tensorflow`` backend: converts episodes and builds the standard models."""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metaplug.contract.allocator import keep_freed_memory
from metaplug.contract.interfaces import EpisodeBatch, ModelSpec
from metaplug.contract.options import checked
from metaplug.contract.threads import ENV, ThreadChoice, choose_threads
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.layout import channels_last
from metaplug_tensorflow.models import FunctionalModel, builder

if TYPE_CHECKING:
    from metaplug_tensorflow.mirrored import Replicas

DTYPES = {"float32": tf.float32, "float64": tf.float64}

LIGHT_PARAMETERS = 100_000
"""Standard ``mlp`` models with fewer weights than this run on one thread by default (as on
torch: :data:`metaplug_torch.backend.LIGHT_PARAMETERS`)."""


def is_light(spec: ModelSpec) -> bool:
    """Whether the standard model of ``spec`` is too small for several threads (an ``mlp``
    with fewer than :data:`LIGHT_PARAMETERS` weights)."""
    if spec.name != "mlp":
        return False
    sizes = [int(np.prod(spec.input_shape)), *spec.options.get("hidden", (40, 40)), int(spec.output_size)]
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes)) < LIGHT_PARAMETERS


def set_threads(count: int) -> bool:
    """TensorFlow's intra- and inter-op threads; ``False`` once its runtime has started
    (they are fixed from then on)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(count)
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class Episodes:
    """An :class:`~metaplug.contract.interfaces.EpisodeBatch` as tensors, images channels last."""

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor


class Backend:
    """TensorFlow 2 backend.

    :param device: a TensorFlow device such as ``"cpu"`` or ``"gpu:0"``; ``None``
        lets TensorFlow place operations (a GPU when one is visible).
    :param dtype: ``"float32"`` (default) or ``"float64"`` for weights and inputs.
    :param threads: TensorFlow's intra- and inter-op threads (process-wide, settable only
        before TensorFlow's runtime starts); ``None``: ``METAPLUG_THREADS`` or chosen for the
        machine and its load (:func:`metaplug.contract.threads.choose_threads`), and 1 for a
        standard ``mlp`` as small as the sinusoid's. :attr:`threads` says what was chosen and why.
        :attr:`allocator` says whether freed memory is kept for reuse
        (:func:`metaplug.contract.allocator.keep_freed_memory`, process-wide).
    :param devices: how many devices this process trains on (default 1). Several run a
        ``tf.distribute.MirroredStrategy`` (:mod:`metaplug_tensorflow.mirrored`): the first
        ``devices`` GPUs for ``device`` ``"gpu"`` (or ``None`` where a GPU is visible), the CPU
        split into ``devices`` logical devices for ``"cpu"`` (or ``None`` without a GPU; set
        before TensorFlow's runtime starts). :attr:`replicas` holds them (``None`` for one).
    """

    name = "tensorflow"
    models: tuple[str, ...] = ("mlp", "conv4", "resnet12")
    batching_modes: tuple[str, ...] = ("auto", "vectorized", "loop")
    """``reference`` (the plain per-task loop that torch's benchmarks compare against) is torch's only."""
    export_formats: tuple[str, ...] = ("savedmodel",)
    """What ``AdaptedModel.export`` writes (see :mod:`metaplug_tensorflow.export`)."""
    weight_formats: tuple[str, ...] = (".weights.h5", ".h5")
    """Files :meth:`read_weights` reads for ``--init-weights``: Keras weight files."""

    def __init__(
        self, device: str | None = None, dtype: str = "float32", threads: int | None = None, devices: int = 1
    ) -> None:
        checked("dtype", dtype, str, choices=tuple(DTYPES))
        devices = checked("devices", devices, int, minimum=1)
        if device is not None:
            kind, _, index = device.lower().partition(":")
            if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
                raise ConfigError(f"device must be 'cpu', 'gpu' or 'gpu:N', got {device!r}")
            found = len(tf.config.list_physical_devices(kind.upper()))
            if kind == "gpu" and not found:
                raise ConfigError(f"device {device!r} requested but TensorFlow sees no GPU")
            if index and int(index) >= found:  # TensorFlow would silently place ops elsewhere
                raise ConfigError(
                    f"device {device!r} requested but TensorFlow sees {found} {kind.upper()} device(s), numbered from 0"
                )
        self.device = device
        self.dtype = DTYPES[dtype]
        self._rng = np.random.default_rng(0)
        self.seed_value = 0
        self._threads_requested = threads is not None
        self.threads: ThreadChoice = self._apply_threads(choose_threads(threads))
        self.allocator = keep_freed_memory()
        self.replicas: Replicas | None = None
        if devices > 1:
            from metaplug_tensorflow.mirrored import Replicas

            self.replicas = Replicas.over(device, devices)

    def _apply_threads(self, choice: ThreadChoice) -> ThreadChoice:
        if set_threads(choice.threads):
            return choice
        current = tf.config.threading.get_intra_op_parallelism_threads()
        return ThreadChoice(current or choice.threads, "fixed: TensorFlow's runtime had started")

    def fit_threads(self, spec: ModelSpec) -> None:
        """One thread for a standard model too small to split (:func:`is_light`), unless the
        count was given (argument or ``METAPLUG_THREADS``) or TensorFlow already runs."""
        if self._threads_requested or self.threads.reason == ENV or not is_light(spec):
            return
        self.threads = self._apply_threads(choose_threads(light=True))

    @property
    def rng(self) -> np.random.Generator:
        """The generator that initialises weights (reseeded by :meth:`seed`)."""
        return self._rng

    @classmethod
    def join_workers(cls, timeout_s: float, device: str | None = None) -> Any:
        """The :class:`~metaplug_tensorflow.distributed.Workers` this process is one of when a launcher
        started it, else ``None`` (see :mod:`metaplug.contract.distributed`)."""
        from metaplug_tensorflow.distributed import Workers

        return Workers.join(timeout_s, device)

    @classmethod
    def launch_workers(cls, nproc: int, argv: Sequence[str], threads: int, timeout_s: float) -> int:
        """Run ``metaplug argv`` on ``nproc`` local workers; their exit status."""
        from metaplug_tensorflow.distributed import launch

        return launch(nproc, argv, threads, timeout_s)

    def seed(self, seed: int) -> None:
        """Seed model initialisation (a numpy generator), TensorFlow's global generator and
        Keras's (``keras.utils.set_random_seed``: your own Keras models initialise
        reproducibly; it also seeds Python's and numpy's global generators);
        :attr:`seed_value` keeps ``seed`` for algorithms that draw their own randomness."""
        self._rng = np.random.default_rng(seed)
        self.seed_value = int(seed)
        tf.keras.utils.set_random_seed(int(seed) % 2**32)  # numpy's global seed takes 32 bits
        tf.random.set_seed(seed)

    def peak_gpu_mb(self) -> float | None:
        """Peak memory TensorFlow allocated on :attr:`device` (the first GPU when ``None``) in MiB
        (``tf.config.experimental.get_memory_info``); ``None`` on the CPU or without a GPU."""
        kind, _, index = (self.device or "gpu").lower().partition(":")
        if kind != "gpu" or not tf.config.list_logical_devices("GPU"):
            return None
        return tf.config.experimental.get_memory_info(f"GPU:{index or 0}")["peak"] / 2**20

    def dense_gflop_per_s(self, repeats: int = 5) -> float:
        """The float32 rate of dense arithmetic on :attr:`device` with the current threads:
        the better of a 1024-square matrix product and a 3x3 convolution (32 maps of 28x28x64
        to 64 channels), each the best of ``repeats`` (``metaplug bench``'s compute floor).
        Both, because they can run on different kernels (torch's did on an AMD CPU:
        docs/benchmarks.md)."""
        with self.scope():
            a = tf.random.uniform((1024, 1024), dtype=tf.float32)
            maps, kernel = tf.random.uniform((32, 28, 28, 64)), tf.random.uniform((3, 3, 64, 64))
            product = _best_seconds(lambda: tf.matmul(a, a), repeats)
            convolution = _best_seconds(lambda: tf.nn.conv2d(maps, kernel, 1, "SAME"), repeats)
        return max(2 * 1024**3 / product, 2 * 32 * 28 * 28 * 64 * 64 * 9 / convolution) / 1e9

    def with_dtype(self, dtype: tf.DType) -> Backend:
        """This backend (same device and generators) computing in ``dtype``; ``self`` if it already does."""
        if dtype == self.dtype:
            return self
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype.name}")
        other = copy.copy(self)
        other.dtype = dtype
        return other

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Place what runs inside on :attr:`device` (no-op when it is ``None``); with several
        devices, inside the ``MirroredStrategy``'s scope (variables made there are mirrored)."""
        if self.replicas is not None:
            with self.replicas.strategy.scope():
                yield
        elif self.device is None:
            yield
        else:
            with tf.device(self.device):
                yield

    def tensor(self, array: np.ndarray, dtype: tf.DType | str | None = None) -> tf.Tensor:
        """``array`` as a tensor on :attr:`device`, unchanged in layout: floating arrays in
        ``dtype`` (default: the backend's), integer arrays as they are."""
        array = np.asarray(array)
        with self.scope():
            if np.issubdtype(array.dtype, np.floating):
                return tf.constant(array, dtype=self.dtype if dtype is None else tf.as_dtype(dtype))
            return tf.constant(array)

    def inputs(self, x: np.ndarray, example_rank: int) -> tf.Tensor:
        """Examples as a tensor of the backend's dtype, images moved to channels last."""
        return self.tensor(channels_last(np.asarray(x), example_rank))

    def targets(self, y: np.ndarray, problem: str) -> tf.Tensor:
        """Labels as int64, regression targets in the backend's dtype."""
        if problem == "classification":
            return self.tensor(np.asarray(y, dtype=np.int64))
        return self.tensor(y)

    def to_tensors(self, batch: EpisodeBatch) -> Episodes:
        """The batch on :attr:`device`: inputs channels last and regression targets in the
        backend's dtype, labels int64."""
        rank = batch.support_x.ndim - 2
        return Episodes(
            self.inputs(batch.support_x, rank),
            self.targets(batch.support_y, batch.problem),
            self.inputs(batch.query_x, rank),
            self.targets(batch.query_y, batch.problem),
        )

    def build_model(self, spec: ModelSpec) -> FunctionalModel:
        """A freshly initialised standard model (``mlp``, ``conv4`` or ``resnet12``) on :attr:`device`."""
        return builder(spec.name).build(self, spec)  # which calls fit_threads

    @staticmethod
    def read_weights(path: str | Path, model: Any = None) -> dict[str, np.ndarray]:
        """A Keras weights file (``model.save_weights``) as numpy arrays by layout name, in
        the shared layout; by the weight names of ``model`` (the run's) when that is a Keras
        model (see :mod:`metaplug_tensorflow.weights`)."""
        from metaplug_tensorflow.weights import read_weights

        return read_weights(path, model)


def _best_seconds(compute: Callable[[], tf.Tensor], repeats: int) -> float:
    """The shortest of ``repeats`` runs of ``compute`` (after one that warms up), in seconds."""
    best = float("inf")
    for _ in range(repeats + 1):
        began = time.perf_counter()
        float(tf.reduce_sum(compute()))
        best = min(best, time.perf_counter() - began)
    return best

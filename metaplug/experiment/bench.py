"""Benchmark workloads, defined once for every backend, and their timing in child processes.

A workload is an episode shape (``sinusoid`` or ``omniglot``) and an algorithm with fixed
hyper-parameters; its name is ``<shape>-<algorithm>``. The named workloads follow the
PyTorch plugin's issue:

``sinusoid-maml``
    MLP 1-40-40-1, 25 tasks per meta-batch, K=10 support and 10 query points, one inner
    SGD step with lr 0.01, second order, Adam outer step.
``omniglot-maml`` / ``omniglot-fomaml``
    conv4 on 1x28x28, 5-way 1-shot with 15 queries per class, 32 tasks per meta-batch, one
    inner step with lr 0.4, second resp. first order.
``omniglot-protonet``
    the same episodes, Prototypical Networks.
``miniimagenet-maml`` / ``miniimagenet-protonet``
    ResNet-12 (``resnet12``, default channels 64-160-320-640) on 3x84x84 random images of
    mini-ImageNet's shape, 5-way 1-shot with 15 queries per class, 2 tasks per meta-batch;
    MAML with one inner step with lr 0.01, second order, resp. Prototypical Networks.
    Expensive on a CPU, so measured only when named (``--workload``), never by default.
``omniglot-mamlpp``, ``omniglot-relationnet``, ``omniglot-r2d2``, ``omniglot-metalstm``
    the same episodes and conv4, each algorithm with the hyper-parameters of its published
    Omniglot configuration (``benchmarks/<algorithm>-omniglot-5w1s.toml``): MAML++ with 5
    second-order inner steps from learned rates initialised to 0.1 and every trick on;
    Relation Networks with the conv relation module; R2-D2 with lambda 50 learned and scale
    10; the Meta-LSTM with 12 updates and 20 hidden units (its learner is this conv4 with 64
    filters, where the configuration's has 32, so that it is MAML's network).
``omniglot-maml-inner-adam`` / ``omniglot-maml-inner-rmsprop``
    ``omniglot-maml`` with the ``inner-adam`` resp. ``inner-rmsprop`` inner rule at lr 0.01
    (second order through the moments). Variants: measured only when named.
``imagefolder-maml`` / ``imagefolder-protonet``
    conv4 on 3x84x84 RGB images from the ``image-folder`` sampler, 5-way 5-shot with 15
    queries per class, 4 tasks per meta-batch (MAML: one inner step with lr 0.01, second
    order): the data-loading workload. The folder is ``$METAPLUG_DATA_DIR/imagefolder`` when
    it exists, else 20 classes x 40 generated 100x100 JPEG images under the cache folder.
    Measured only when named.

Workloads with a sampler draw their batches live, ``prefetch`` batches ahead in the
background (:class:`~metaplug.experiment.prefetch.Prefetcher`; 0: in the loop), and
report the time each step waited for its batch (``data_wait_ms``, and ``data_wait_pct``
of the time per step including the wait) and the peak memory the sampler allocated while
building its data and drawing its first batches (``sampler_peak_mb``; memory-mapped
caches not counted).

Other algorithms run on the shapes their problems allow, with their default
hyper-parameters and the shape's inner learning rate. Each (backend, workload) pair is
timed in its own process (:func:`measure` is the child's side), so that one pair's memory
and caches do not count against another's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract.allocator import state as allocator_state
from metaplug.contract.distributed import DEFAULT_TIMEOUT_S
from metaplug.contract.interfaces import EpisodeBatch, TaskSpec
from metaplug.contract.threads import ENV as THREADS_ENV
from metaplug.errors import ConfigError, DatasetError, suggest


@dataclass(frozen=True)
class Shape:
    """Episodes and model of a workload."""

    name: str
    problem: str
    model: str
    meta_batch_size: int
    task_options: dict[str, int]
    inner_lr: float
    input_shape: tuple[int, ...] = (1, 28, 28)
    """Image shape of the random episodes used when no sampler provides real data."""
    on_request: bool = False
    """Measured only when its workload is named: no generic workloads, none in the default plan."""


SHAPES: dict[str, Shape] = {
    "sinusoid": Shape("sinusoid", "regression", "mlp", 25, {"shots": 10, "queries": 10}, 0.01),
    "omniglot": Shape("omniglot", "classification", "conv4", 32, {"ways": 5, "shots": 1, "queries": 15}, 0.4),
    "miniimagenet": Shape(
        "miniimagenet",
        "classification",
        "resnet12",
        2,
        {"ways": 5, "shots": 1, "queries": 15},
        0.01,
        input_shape=(3, 84, 84),
        on_request=True,
    ),
    "imagefolder": Shape(
        "imagefolder",
        "classification",
        "conv4",
        4,
        {"ways": 5, "shots": 5, "queries": 15},
        0.01,
        input_shape=(3, 84, 84),
        on_request=True,
    ),
}

SAMPLERS = {"imagefolder": "image-folder"}
"""Shape -> task sampler, where the names differ."""

NAMED: dict[str, dict[str, Any]] = {
    "sinusoid-maml": {"inner_lr": 0.01, "inner_steps": 1, "first_order": False},
    "omniglot-maml": {"inner_lr": 0.4, "inner_steps": 1, "first_order": False},
    "omniglot-fomaml": {"inner_lr": 0.4, "inner_steps": 1},
    "omniglot-protonet": {},
    "omniglot-mamlpp": {
        "inner_lr": 0.1,
        "inner_steps": 5,
        "multi_step_loss": True,
        "multi_step_loss_steps": 10000,
        "learned_inner_lr": True,
        "per_step_batch_norm": True,
        "first_order_steps": 0,
        "cosine_annealing": True,
        "cosine_steps": 125000,
        "min_outer_lr": 0.00001,
    },
    "omniglot-relationnet": {"relation": "conv", "relation_filters": 64, "relation_hidden": 8},
    "omniglot-r2d2": {"init_lambda": 50.0, "learn_lambda": True, "init_scale": 10.0, "init_offset": 0.0},
    "omniglot-metalstm": {"inner_steps": 12, "hidden_size": 20},
    "omniglot-maml-inner-adam": {"inner_lr": 0.01, "inner_steps": 1, "first_order": False, "inner_rule": "inner-adam"},
    "omniglot-maml-inner-rmsprop": {
        "inner_lr": 0.01,
        "inner_steps": 1,
        "first_order": False,
        "inner_rule": "inner-rmsprop",
    },
    "miniimagenet-maml": {"inner_lr": 0.01, "inner_steps": 1, "first_order": False},
    "miniimagenet-protonet": {},
    "imagefolder-maml": {"inner_lr": 0.01, "inner_steps": 1, "first_order": False},
    "imagefolder-protonet": {},
}
"""Workloads with fixed hyper-parameters; their algorithms get no generic workloads."""

VARIANTS: dict[str, str] = {"omniglot-maml-inner-adam": "maml", "omniglot-maml-inner-rmsprop": "maml"}
"""Named workloads that vary another one's options (the name goes on with the option's value),
and their algorithm; measured only when named."""

OUTER_OPTIMIZER, OUTER_LR = "adam", 0.001


@dataclass(frozen=True)
class Workload:
    name: str
    shape: Shape
    algorithm: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Fixed hyper-parameters; ``None`` for a generic workload (defaults plus the shape's ``inner_lr``)."""
    generic: bool = False


def workload(name: str) -> Workload:
    """The workload called ``name`` (``<shape>-<algorithm>``)."""
    shape_name, _, algorithm = name.partition("-")
    if shape_name not in SHAPES or not algorithm:
        known = [*NAMED, *(f"{s}-<algorithm>" for s in SHAPES)]
        raise ConfigError(f"unknown workload {name!r}.{suggest(name, NAMED)} Workloads: {', '.join(known)}")
    if name in NAMED:
        return Workload(name, SHAPES[shape_name], VARIANTS.get(name, algorithm), dict(NAMED[name]))
    if SHAPES[shape_name].on_request:
        named = [n for n in NAMED if n.startswith(f"{shape_name}-")]
        raise ConfigError(f"unknown workload {name!r}; the {shape_name} workloads: {', '.join(named)}")
    return Workload(name, SHAPES[shape_name], algorithm, {}, generic=True)


def workloads_for(algorithm: str, problems: tuple[str, ...]) -> list[Workload]:
    """The workloads an algorithm is measured on: its named ones, else one per shape it
    supports (shapes and variants measured only on request left out)."""
    named = [workload(n) for n in NAMED if n not in VARIANTS and n.split("-", 1)[1] == algorithm]
    named = [w for w in named if not w.shape.on_request]
    if named:
        return named
    shapes = [s for s in SHAPES.values() if s.problem in problems and not s.on_request]
    return [workload(f"{s.name}-{algorithm}") for s in shapes]


def conv4_forward_flops(input_shape: tuple[int, ...], ways: int, filters: int = 64) -> int:
    """Multiply-adds x 2 of conv4 (max-pooling) and its head on one image; ReLU, BN, pooling not counted."""
    channels, height, width = input_shape
    flops = 0
    for _ in range(4):
        flops += 2 * height * width * filters * channels * 9
        channels, height, width = filters, height // 2, width // 2
    return flops + 2 * filters * height * width * ways


def nominal_gflop(w: Workload) -> float | None:
    """Forward and backward (3x forward) of the model over every support and query image of a
    meta-batch: the usual nominal count (second-order terms not counted). Conv4 workloads only."""
    if w.shape.model != "conv4":
        return None
    options = w.shape.task_options
    images = w.shape.meta_batch_size * options["ways"] * (options["shots"] + options["queries"])
    return 3 * images * conv4_forward_flops(w.shape.input_shape, options["ways"]) / 1e9


# -- child side -----------------------------------------------------------------------------


def episodes(w: Workload, count: int, seed: int = 0) -> tuple[list[EpisodeBatch], TaskSpec, str]:
    """``count`` meta-batches of the workload: real data where available, else seeded random
    data of the same shapes. Returns the batches, their spec and a description of the source."""
    from metaplug.plugins.discovery import registry

    if w.shape.name not in registry().names("task-samplers"):
        return _random_images(w, count, seed, f"random ({w.shape.name} shape; no sampler)")
    sampler_class = registry().load("task-samplers", w.shape.name)
    try:
        sampler = sampler_class(split="train", seed=seed, **w.shape.task_options)
    except DatasetError:
        return _random_images(w, count, seed, "random (Omniglot not found)")
    source = "sinusoid (generated)" if w.shape.name == "sinusoid" else f"{w.shape.name} (real)"
    return [sampler.sample(w.shape.meta_batch_size) for _ in range(count)], sampler.spec, source


def bench_image_folder(classes: int = 20, per_class: int = 40, side: int = 100) -> tuple[Path, str]:
    """The image folder of the ``imagefolder`` workloads and its description:
    ``$METAPLUG_DATA_DIR/imagefolder`` if it exists, else generated once (seeded smooth
    colour patterns saved as JPEG) under ``$METAPLUG_CACHE_DIR/bench``."""
    import os
    import shutil
    import tempfile

    from metaplug.tasks.datasets import cache_dir, data_dir

    real = data_dir("imagefolder")
    if real.is_dir():
        return real, f"imagefolder ({real})"
    folder = cache_dir() / "bench" / f"imagefolder-{classes}x{per_class}-{side}px"
    description = f"imagefolder (generated: {classes} classes x {per_class} JPEG, {side}px)"
    if folder.is_dir():
        return folder, description
    from PIL import Image

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        rng = np.random.default_rng(0)
        grid = np.linspace(0, 1, side, dtype=np.float32)
        for c in range(classes):
            (staging / f"class{c:03d}").mkdir()
            base = rng.uniform(0, 6, size=(3, 2))
            for i in range(per_class):
                phase = rng.uniform(0, 6, size=3)
                pixels = np.stack(
                    [
                        0.5 + 0.5 * np.sin(base[k, 0] * grid[:, None] * 6 + base[k, 1] * grid[None, :] * 6 + phase[k])
                        for k in range(3)
                    ],
                    axis=-1,
                )
                noise = rng.normal(0, 0.05, size=pixels.shape)
                image = np.clip(255 * (pixels + noise), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(staging / f"class{c:03d}" / f"{i:03d}.jpg", quality=90)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder, description


@dataclass
class BatchSource:
    """Where the timed steps get their batches: ``draw()`` gives the next one."""

    draw: Callable[[], EpisodeBatch]
    spec: TaskSpec
    description: str
    sampler_peak_mb: float | None = None
    close: Callable[[], None] = lambda: None


def batch_source(w: Workload, prefetch: int, workers: int = 1, seed: int = 0, probe: int = 3) -> BatchSource:
    """The workload's batches drawn live from its sampler (``prefetch`` ahead in the
    background), or cycled from four seeded random batches when there is no sampler or
    no data. The sampler's peak memory is measured while it is built and draws ``probe``
    batches."""
    from metaplug.experiment.prefetch import Prefetcher
    from metaplug.plugins.discovery import registry

    name = SAMPLERS.get(w.shape.name, w.shape.name)
    options: dict[str, Any] = dict(w.shape.task_options)
    description = "sinusoid (generated)" if w.shape.name == "sinusoid" else f"{w.shape.name} (real)"
    if name not in registry().names("task-samplers"):
        return _cycled(w, seed, f"random ({w.shape.name} shape; no sampler)")
    if w.shape.name == "imagefolder":
        root, description = bench_image_folder()
        options.update(root=str(root), image_size=w.shape.input_shape[-1], color="rgb")
    tracemalloc.start()
    try:
        sampler = registry().load("task-samplers", name)(split="train", seed=seed, **options)
        tasks = w.shape.meta_batch_size
        source: Any = Prefetcher(sampler, tasks, prefetch, workers) if prefetch else sampler
        for _ in range(probe):
            source.sample(tasks)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    except DatasetError:
        return _cycled(w, seed, "random (Omniglot not found)")
    finally:
        tracemalloc.stop()
    return BatchSource(
        lambda: source.sample(tasks),
        sampler.spec,
        description,
        round(peak, 1),
        source.close if isinstance(source, Prefetcher) else (lambda: None),
    )


def _cycled(w: Workload, seed: int, description: str) -> BatchSource:
    batches, spec, _ = _random_images(w, 4, seed, description)
    cycle = itertools.cycle(batches)
    return BatchSource(lambda: next(cycle), spec, description)


def _random_images(
    w: Workload, count: int, seed: int, source: str, classes: int = 4400
) -> tuple[list[EpisodeBatch], TaskSpec, str]:
    rng = np.random.default_rng(seed)
    ways, shots, queries = (w.shape.task_options[k] for k in ("ways", "shots", "queries"))
    tasks, shape = w.shape.meta_batch_size, w.shape.input_shape
    spec = TaskSpec("classification", shape, ways, num_classes=classes, default_model=w.shape.model)

    def labels(per_class: int) -> np.ndarray:
        return np.broadcast_to(np.repeat(np.arange(ways, dtype=np.int64), per_class), (tasks, ways * per_class)).copy()

    batches = [
        EpisodeBatch(
            support_x=rng.random((tasks, ways * shots, *shape), dtype=np.float32),
            support_y=labels(shots),
            query_x=rng.random((tasks, ways * queries, *shape), dtype=np.float32),
            query_y=labels(queries),
            problem="classification",
            classes=np.stack([rng.choice(classes, ways, replace=False) for _ in range(tasks)]).astype(np.int64),
        )
        for _ in range(count)
    ]
    return batches, spec, source


def measure(
    backend_name: str,
    workload_name: str,
    steps: int,
    warmup: int,
    batching: str | None = None,
    prefetch: int = 2,
    data_workers: int = 1,
    workers: Any = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` meta-training steps after ``warmup`` untimed ones, and the time each
    waited for its batch (the child's work); with ``workers``
    (:class:`~metaplug.contract.distributed.Workers`), each step trains this worker's slice of
    the meta-batch and averages the gradients over all; ``overrides`` replace the workload's
    algorithm options (e.g. ``inner_steps``)."""
    from metaplug.experiment.components import algorithm as build_algorithm
    from metaplug.experiment.components import describe_options
    from metaplug.plugins.discovery import registry

    reg = registry()
    w = workload(workload_name)
    algorithm_class = reg.load("algorithms", w.algorithm, backend=backend_name)
    defaults = {o.name: o.default for o in describe_options(algorithm_class, "algorithms")}
    names = set(defaults)
    options = dict(w.hyperparameters)
    if w.generic and "inner_lr" in names:
        options["inner_lr"] = w.shape.inner_lr
    if batching is not None:
        if "batching" not in names:
            raise ConfigError(f"{w.algorithm} ({backend_name}) has no batching option")
        options["batching"] = batching
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"{w.algorithm} ({backend_name}) has no option {key!r}.{suggest(key, names)}")
        options[key] = value
    source = batch_source(w, prefetch, data_workers)
    algorithm = build_algorithm(
        w.algorithm,
        spec=source.spec,
        backend=backend_name,
        model=w.shape.model,
        optimizer=OUTER_OPTIMIZER,
        lr=OUTER_LR,
        **options,
    )
    if workers is not None:
        from metaplug.contract.distributed import check_meta_batch
        from metaplug.experiment.workers import ShardedAlgorithm

        check_meta_batch(w.shape.meta_batch_size, workers.world_size)
        algorithm = ShardedAlgorithm(algorithm, workers, source.spec.problem)
    try:
        choice = _settle_batching(algorithm, source.draw() if workers is None else None)
        for _ in range(warmup):
            algorithm.meta_train_step(source.draw())
        reduced = workers.reduce_seconds if workers is not None else 0.0
        times, waits = [], []
        for _ in range(steps):
            asked = time.perf_counter()
            batch = source.draw()
            began = time.perf_counter()
            algorithm.meta_train_step(batch)
            times.append(time.perf_counter() - began)
            waits.append(began - asked)
    finally:
        source.close()
    median = statistics.median(times)
    scaled: dict[str, Any] = {"workers": 1}
    if workers is not None:
        scaled = {"workers": workers.world_size, "engine": workers.name}
        if workers.reduce_seconds:  # measured where the all-reduce runs eagerly (torch)
            scaled["allreduce_ms"] = round(1000 * (workers.reduce_seconds - reduced) / steps, 3)
    backend = getattr(algorithm, "backend", None)
    threads = getattr(backend, "threads", None)
    floor = compute_floor(w, backend)
    return {
        "backend": backend_name,
        "algorithm": w.algorithm,
        "workload": w.name,
        "batching": options.get("batching", defaults.get("batching")),
        "batching_used": _resolved_batching(algorithm),
        "batching_by": getattr(choice, "how", None),
        "batching_reason": choice.describe() if choice is not None else None,
        "precision": options.get("precision", defaults.get("precision")),
        "median_ms": round(1000 * median, 3),
        "mean_ms": round(1000 * statistics.fmean(times), 3),
        "tasks_per_s": round(w.shape.meta_batch_size / median, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": peak_gpu_mb(backend),
        "threads": threads if isinstance(threads, int) else getattr(threads, "threads", None),
        "threads_reason": getattr(threads, "reason", None),
        "allocator": allocator_state(),
        "options": dict(overrides or {}),
        **floor,
        **({"x_floor": round(1000 * median / floor["floor_ms"], 2)} if floor else {}),
        "data_wait_ms": round(1000 * statistics.mean(waits), 3),
        "data_wait_pct": round(100 * sum(waits) / (sum(waits) + sum(times)), 2),
        "prefetch": prefetch,
        "sampler_peak_mb": source.sampler_peak_mb,
        "steps": steps,
        "warmup": warmup,
        "data": source.description,
        "device": str(getattr(backend, "device", "cpu")),
        **scaled,
    }


def compute_floor(w: Workload, backend: Any) -> dict[str, float]:
    """``dense_gflop_per_s`` (the backend's measured float32 rate of dense arithmetic, its
    ``dense_gflop_per_s()``: the better of a matrix product and a convolution) and
    ``floor_ms``, the workload's nominal FLOPs at that rate: no step can be faster, so
    ``median_ms / floor_ms`` compares machines. Empty for a workload without a nominal
    count or a backend that cannot measure the rate."""
    gflop, rate = nominal_gflop(w), getattr(backend, "dense_gflop_per_s", None)
    if gflop is None or not callable(rate):
        return {}
    measured = float(rate())
    return {"dense_gflop_per_s": round(measured, 1), "floor_ms": round(1000 * gflop / measured, 1)}


def peak_gpu_mb(backend: Any) -> float | None:
    """The backend's peak GPU memory in MiB (its ``peak_gpu_mb()``: torch's
    ``max_memory_allocated``, TensorFlow's ``get_memory_info(...)["peak"]``); ``None``
    without a GPU or for a backend that does not report it."""
    report = getattr(backend, "peak_gpu_mb", None)
    value = report() if callable(report) else None
    return None if value is None else round(float(value), 1)


def peak_rss_mb() -> float:
    """This process's peak resident memory (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# -- parent side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    backend: str
    workload: Workload


def plan(backend: str | None = None, algorithm: str | None = None, workload_name: str | None = None) -> list[Pair]:
    """Every (backend, workload) pair to measure, filtered by the given names."""
    from metaplug.plugins.discovery import registry

    reg = registry()
    backends = [reg.get("backends", backend).name] if backend else reg.names("backends")
    if not backends:
        raise ConfigError("no backend is installed; install one, e.g. pip install metaplug-torch")
    chosen = workload(workload_name) if workload_name else None
    if algorithm:
        reg.get("algorithms", algorithm)  # unknown name: error with suggestions
    if chosen and algorithm and chosen.algorithm != algorithm:
        raise ConfigError(f"workload {chosen.name!r} runs {chosen.algorithm!r}, not {algorithm!r}")
    names = [chosen.algorithm] if chosen else ([algorithm] if algorithm else reg.names("algorithms"))
    pairs = []
    for b in backends:
        for name in names:
            records = [r for r in reg.records("algorithms", name) if b in r.backends]
            if not records:
                if backend and (algorithm or chosen):
                    reg.get("algorithms", name, backend=b)  # error listing the backends it has
                continue
            problems = tuple(p for r in records for p in r.problems)
            candidates = workloads_for(name, problems)
            if chosen:
                if chosen.shape.problem not in problems:
                    raise ConfigError(
                        f"algorithm {name!r} does not support {chosen.shape.problem} (workload {chosen.name!r})"
                    )
                candidates = [chosen]
            pairs += [Pair(b, w) for w in candidates]
    if not pairs:
        raise ConfigError("nothing to benchmark: no installed algorithm matches")
    return pairs


def run_child(
    pair: Pair,
    steps: int,
    warmup: int,
    batching: str | None = None,
    timeout: float | None = None,
    prefetch: int = 2,
    data_workers: int = 1,
    nproc: int = 1,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure ``pair`` in a fresh ``python -m metaplug bench-child`` process (which launches
    ``nproc`` workers when more than one), with ``threads`` threads per worker when given."""
    request = json.dumps(
        {
            "backend": pair.backend,
            "workload": pair.workload.name,
            "steps": steps,
            "warmup": warmup,
            "batching": batching,
            "prefetch": prefetch,
            "data_workers": data_workers,
            "nproc": nproc,
            "threads": threads,
            "options": overrides or {},
        }
    )
    command = [sys.executable, "-m", "metaplug", "bench-child", request]
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1")
        env[THREADS_ENV] = str(threads)  # the backends' own choice (metaplug.contract.threads)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        message = lines[-1] if lines else f"exit status {done.returncode}"
        return {"error": message.removeprefix("Error: ")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_pair(
    pair: Pair,
    steps: int,
    warmup: int,
    reference: bool = False,
    timeout: float | None = None,
    batching: str | None = None,
    prefetch: int = 2,
    data_workers: int = 1,
    nproc: int = 1,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One output row: the measurement (with ``batching``, that mode instead of the
    algorithm's default; ``overrides`` replace algorithm options), nominal FLOPs and (with
    ``reference``) the speed-up over the plain per-task loop (``batching="reference"``).
    With ``nproc`` > 1 the pair runs on that many workers (``threads`` each) and also on one
    worker with as many threads, for ``worker_speedup``."""
    row: dict[str, Any] = {
        "backend": pair.backend,
        "algorithm": pair.workload.algorithm,
        "workload": pair.workload.name,
    }
    row.update(
        run_child(pair, steps, warmup, batching, timeout, prefetch, data_workers, nproc, threads, overrides=overrides)
    )
    if threads is not None and row.get("threads") is None:
        row["threads"] = threads
    if nproc > 1 and row.get("median_ms"):
        one = run_child(
            pair, steps, warmup, batching, timeout, prefetch, data_workers, threads=threads, overrides=overrides
        )
        if "error" in one:
            row["one_worker"] = f"not measured: {one['error']}"
        else:
            row["one_worker_tasks_per_s"] = one["tasks_per_s"]
            row["worker_speedup"] = round(one["median_ms"] / row["median_ms"], 2)
    gflop = nominal_gflop(pair.workload)
    if gflop is not None:
        row["nominal_gflop"] = round(gflop, 1)
        if row.get("median_ms"):
            row["gflop_per_s"] = round(gflop / (row["median_ms"] / 1000), 1)
    if reference:
        measured = run_child(
            pair, steps, warmup, "reference", timeout, prefetch, data_workers, threads=threads, overrides=overrides
        )
        if "error" in measured:
            row["reference"] = f"not measured: {measured['error']}"
        else:
            row["reference_median_ms"] = measured["median_ms"]
            if row.get("median_ms"):
                row["speedup"] = round(measured["median_ms"] / row["median_ms"], 2)
    return row


BUSY_LOOP = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    pass"
"""CPU-bound until its parent (the pid in ``argv[1]``) ends: a killed ``metaplug bench`` leaves none spinning."""


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` CPU-bound processes (:data:`BUSY_LOOP`) running while the block runs: the
    competing load of ``metaplug bench --busy``. They are ended on exit."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            command = [sys.executable, "-c", BUSY_LOOP, str(os.getpid())]
            started.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
        yield started
    finally:
        for process in started:
            process.kill()
        for process in started:
            process.wait()


def _settle_batching(algorithm: Any, batch: EpisodeBatch | None) -> Any:
    """Settle ``batching = "auto"`` before the warm-up (its measurement is not timed): on
    ``batch`` (:mod:`metaplug.contract.calibration`), or by the backend's rule without one
    (several workers); the algorithm's ``BatchingChoice``, ``None`` if it has none."""
    settle = getattr(algorithm, "settle_batching", None)
    if not callable(settle):
        return None
    return settle(batch, why="not measured: several workers")


def _resolved_batching(algorithm: Any) -> str | None:
    """The mode an ``"auto"`` batching resolved to (the algorithm's ``mode``). An algorithm
    may still run some work its own way (Reptile with inner Adam trains task by task
    whatever the mode)."""
    value = getattr(algorithm, "mode", None)
    return value if isinstance(value, str) else None


def child_main(request_json: str) -> dict[str, Any] | None:
    """Parse the parent's request and measure (raises :class:`MetaplugError` on bad requests).
    A request for several workers launches them (each runs this again) and returns ``None``:
    rank 0 prints the row, the other workers return ``None`` too."""
    try:
        request = json.loads(request_json)
        arguments = (
            str(request["backend"]),
            str(request["workload"]),
            int(request["steps"]),
            int(request["warmup"]),
            request.get("batching"),
            int(request.get("prefetch", 2)),
            int(request.get("data_workers", 1)),
        )
        overrides = dict(request.get("options") or {})
        nproc = int(request.get("nproc") or 1)
        threads = request.get("threads")
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad bench-child request: {exc}") from exc
    if nproc == 1:
        return measure(*arguments, overrides=overrides)
    from metaplug.plugins.discovery import registry

    backend = registry().load("backends", arguments[0])
    if not hasattr(backend, "join_workers"):
        raise ConfigError(f"backend {arguments[0]!r} cannot run on several workers")
    workers = backend.join_workers(DEFAULT_TIMEOUT_S, None)
    if workers is None:
        status = backend.launch_workers(nproc, ["bench-child", request_json], int(threads or 1), DEFAULT_TIMEOUT_S)
        if status:
            raise ConfigError(f"the {nproc} workers failed (exit status {status})")
        return None
    try:
        row = measure(*arguments, workers=workers, overrides=overrides)
    finally:
        workers.close()
    return row if workers.rank == 0 else None


__all__ = [
    "NAMED",
    "SHAPES",
    "VARIANTS",
    "Pair",
    "Workload",
    "bench_pair",
    "busy_processes",
    "measure",
    "plan",
    "workload",
]

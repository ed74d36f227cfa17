"""Choosing what ``batching = "auto"`` means by measuring it on this machine.

Which batching runs a meta-batch fastest depends on the CPU or GPU, the model, the episode
shape and the algorithm: on a 2-core AMD EPYC the per-task loop ran conv4 MAML 2.5-5x faster
than ``vmap``, on an H200 ``vmap`` won by far, and a rule fixed on one machine was wrong on
another (docs/benchmarks.md). So a backend's algorithm, the first time it meta-trains with
``batching = "auto"``, asks :func:`choose`:

1. with :data:`ENV` ``=0`` (or ``off``), nothing is timed: ``auto`` is the backend's rule;
2. with only one eligible mode (say, native batch norm, which ``vmap`` differentiates
   wrongly), that mode;
3. otherwise the cache (:func:`cache_path`, one JSON file per user) is looked up by a key
   of the machine, the backend and its device and threads, the model, the episode shape
   and the algorithm with its options; a hit is used (unless :data:`ENV` ``=redo``);
4. otherwise each eligible mode runs one warm-up and up to :data:`REPEATS` timed
   meta-training steps on the batch (its first :data:`TASKS` tasks when it is large:
   :func:`first_tasks`; the backend restores
   every weight and optimizer state afterwards); the fastest is chosen and cached.
   A mode whose first timed step is :data:`CUTOFF` times slower than the best so far is
   not timed again (a warm-up, which may compile, is never compared), and a mode that
   fails (an operation ``vmap`` does not support, out of memory) is left out, unless it is
   the rule's own choice.

The result is a concrete mode. A training run records it in its ``config.toml``
(``algorithm.batching``), so that ``--resume`` and ``evaluate`` run the same mode, bit for
bit, without measuring again. Framework-free: both backends use it; what is
backend-specific (which modes are eligible, running one step, the key's framework parts)
stays in each plugin.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaplug.contract.allocator import release_freed_memory
from metaplug.contract.interfaces import EpisodeBatch
from metaplug.errors import ConfigError

ENV = "METAPLUG_CALIBRATE"
"""``1`` (or unset): measure once per key and cache; ``0``/``off``: never measure (the
backend's rule); ``redo``: measure again and replace the cached choice."""

SETTINGS: dict[str, str] = {
    "": "on",
    "1": "on",
    "on": "on",
    "true": "on",
    "yes": "on",
    "0": "off",
    "off": "off",
    "false": "off",
    "no": "off",
    "redo": "redo",
}

CACHE_FILE = "batching.json"
FORMAT = 1
"""Version of the cache file's layout; entries of another version are ignored."""

TASKS = 4
"""Tasks of a large meta-batch each timed step runs (see :data:`WHOLE`)."""
WHOLE = 1_000_000
"""Meta-batches whose inputs hold at most this many numbers are timed whole: a vectorized
step's cost hardly grows with the tasks of a small model (sinusoid MAML: 25 tasks), so a
few tasks would understate its advantage; larger ones (Omniglot's 32 tasks of 80 images)
run :data:`TASKS` tasks, to keep the measurement to seconds and its memory small."""
REPEATS = 2
"""Timed steps per mode after its warm-up: 1 when the warm-up took over :data:`LONG_S`, or
when the first timed step was :data:`CUTOFF` times slower than the best mode's so far."""
LONG_S = 1.0
CUTOFF = 2.0

LOG = logging.getLogger("metaplug.calibration")

CLOCK: Callable[[], float] = time.perf_counter
"""The clock that times the steps (tests replace it with a fake one)."""

Step = Callable[[], None]
"""One meta-training step that returns once the device has finished it."""


@dataclass(frozen=True)
class BatchingChoice:
    """The concrete mode ``auto`` stands for and how it was chosen.

    ``how`` is ``"calibrated"`` (timed now), ``"cached"`` (timed before on this machine),
    ``"rule"`` (not timed: calibration off, or nothing to choose between) or
    ``"requested"`` (the option named a concrete mode). ``timings_ms`` are the timed steps
    (milliseconds for :data:`TASKS` tasks) by mode."""

    mode: str
    how: str
    detail: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    """Wall time the measurement took (warm-ups included; 0 when nothing was timed)."""

    def describe(self) -> str:
        """One line, e.g. ``loop (calibrated: loop 412 ms, vectorized 1630 ms per step of 8 tasks)``."""
        return f"{self.mode} ({self.how}{': ' + self.detail if self.detail else ''})"


def setting(env: Mapping[str, str] | None = None) -> str:
    """:data:`ENV` as ``"on"``, ``"off"`` or ``"redo"``; another value is a one-line error."""
    raw = (os.environ if env is None else env).get(ENV, "")
    value = SETTINGS.get(raw.strip().lower())
    if value is None:
        raise ConfigError(f"{ENV} must be 1, 0 or redo, got {raw!r}")
    return value


def cache_path(env: Mapping[str, str] | None = None) -> Path:
    """The cache file: ``$METAPLUG_CACHE_DIR/batching.json``, else under
    ``$XDG_CACHE_HOME/metaplug``, else ``~/.cache/metaplug``."""
    env = os.environ if env is None else env
    if env.get("METAPLUG_CACHE_DIR"):
        folder = Path(env["METAPLUG_CACHE_DIR"])
    elif env.get("XDG_CACHE_HOME"):
        folder = Path(env["XDG_CACHE_HOME"]) / "metaplug"
    else:
        folder = Path.home() / ".cache" / "metaplug"
    return folder.expanduser() / CACHE_FILE


def machine() -> dict[str, Any]:
    """What identifies this machine's speed: host name, processor model and CPU count."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"host": platform.node(), "cpu": model, "cpus": os.cpu_count()}


def digest(value: Any) -> str:
    """A stable digest of ``value`` (JSON-able; other objects by ``str``): the cache's keys."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries by key; an unreadable or foreign file counts as empty."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return dict(data["entries"])


def write_entry(path: Path, key: str, entry: Mapping[str, Any]) -> None:
    """Add ``entry`` under ``key``, atomically (a temporary file renamed over the cache); a
    cache that cannot be written is logged, not fatal: the choice is measured again next time."""
    entries = read_cache(path)
    entries[key] = dict(entry)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"format": FORMAT, "entries": entries}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as exc:
        LOG.warning("cannot write the batching cache %s: %s", path, exc.strerror or exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def time_modes(
    candidates: Sequence[str],
    trial: Callable[[str], Step],
    required: str,
    clock: Callable[[], float] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds per step of each candidate (its best timed step, or its warm-up when that
    alone lost), and why the others were left out. ``trial(mode)`` gives a step in
    ``mode``; an exception from the ``required`` mode's trial propagates (a real error).
    ``clock`` defaults to :data:`CLOCK`."""
    clock = clock or CLOCK
    seconds: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for mode in candidates:
        try:
            step = trial(mode)
            warm = _timed(step, clock)  # compiles, allocates: not compared
            best = min(seconds.values(), default=float("inf"))
            timed = [_timed(step, clock)]
            if warm <= LONG_S and timed[0] <= CUTOFF * best:
                timed += [_timed(step, clock) for _ in range(REPEATS - 1)]
            seconds[mode] = min(timed)
        except Exception as exc:
            if mode == required:
                raise
            dropped[mode] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return seconds, dropped


def _timed(step: Step, clock: Callable[[], float]) -> float:
    began = clock()
    step()
    return clock() - began


def choose(
    requested: str,
    rule: str,
    candidates: Sequence[str],
    parts: Mapping[str, Any],
    trial: Callable[[str], Step],
    *,
    tasks: int,
    clock: Callable[[], float] | None = None,
    env: Mapping[str, str] | None = None,
) -> BatchingChoice:
    """The concrete mode for the ``batching`` option ``requested`` (see the module's docstring).

    ``rule`` is the backend's choice without measuring, ``candidates`` the modes eligible
    for ``auto`` on this model and device, ``parts`` the backend's part of the cache key
    (:func:`machine` is added), ``trial(mode)`` a step in ``mode`` on ``tasks`` tasks.
    """
    if requested != "auto":
        return BatchingChoice(requested, "requested")
    how = setting(env)
    eligible = [rule, *(m for m in candidates if m != rule)]
    if how == "off":
        return BatchingChoice(rule, "rule", f"{ENV}=0")
    if len(eligible) == 1:
        return BatchingChoice(rule, "rule", "the only eligible mode")
    parts = {**machine(), **parts, "candidates": sorted(eligible)}
    key, path = digest(parts), cache_path(env)
    if how != "redo":
        entry = read_cache(path).get(key)
        if isinstance(entry, dict) and entry.get("mode") in eligible:
            timings = {str(k): float(v) for k, v in dict(entry.get("timings_ms", {})).items()}
            measured_on = int(entry.get("tasks", tasks))
            choice = BatchingChoice(str(entry["mode"]), "cached", _detail(timings, measured_on, path), timings)
            LOG.info("batching auto: %s", choice.describe())
            return choice
    began = time.perf_counter()
    seconds, dropped = time_modes(eligible, trial, rule, clock)
    spent = time.perf_counter() - began
    release_freed_memory()  # the losing trials' memory would otherwise stay with the process
    mode = min(seconds, key=lambda m: seconds[m])
    timings = {m: round(1000 * s, 1) for m, s in seconds.items()}
    detail = _detail(timings, tasks) + "".join(f"; {m} left out ({why})" for m, why in dropped.items())
    choice = BatchingChoice(mode, "calibrated", f"{detail}; measured in {spent:.1f} s", timings, round(spent, 2))
    write_entry(
        path,
        key,
        {"mode": mode, "timings_ms": timings, "tasks": tasks, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), **parts},
    )
    LOG.info("batching auto: %s", choice.describe())
    return choice


def first_tasks(batch: EpisodeBatch, count: int = TASKS, whole: int = WHOLE) -> EpisodeBatch:
    """What the timed steps run: ``batch`` itself when its inputs hold at most ``whole``
    numbers, else its first ``count`` tasks."""
    if batch.support_x.size + batch.query_x.size <= whole:
        return batch
    return EpisodeBatch(
        batch.support_x[:count],
        batch.support_y[:count],
        batch.query_x[:count],
        batch.query_y[:count],
        batch.problem,
        None if batch.classes is None else batch.classes[:count],
        {k: v[:count] for k, v in batch.params.items()},
    )


def _detail(timings: Mapping[str, float], tasks: int, cache: Path | None = None) -> str:
    per_mode = ", ".join(f"{m} {v:.0f} ms" for m, v in timings.items())
    where = f"; from {cache}" if cache is not None else ""
    return f"{per_mode} per step of {tasks} tasks{where}"


__all__ = [
    "CACHE_FILE",
    "ENV",
    "BatchingChoice",
    "cache_path",
    "choose",
    "digest",
    "first_tasks",
    "machine",
    "read_cache",
    "setting",
    "time_modes",
    "write_entry",
]

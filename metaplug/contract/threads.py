"""How many threads a backend's operations may use on this machine, now.

A framework's default (one thread per core, busy-waiting between operations) collapses
when other processes share the cores: on 2 cores with two CPU-bound neighbours, a conv4
MAML step took 10x longer with 2 threads than with 1 (docs/benchmarks.md). Backends
therefore ask :func:`choose_threads` instead of keeping their framework's default:

1. an explicit count (the backend's ``threads=`` argument), else
2. ``METAPLUG_THREADS`` (what ``--threads`` sets), else
3. automatically: the CPUs this process may run on (``os.sched_getaffinity``, the cgroup's
   CPU quota, ``OMP_NUM_THREADS`` when set), less the cores other processes keep busy
   (the 1-minute load average), at least 1; and 1 for ``light`` work (models as small as
   the sinusoid MLP, whose operations are too short to split).

Framework-free: both backends use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from metaplug.errors import ConfigError

ENV = "METAPLUG_THREADS"
"""Environment variable with the thread count (what ``--threads`` sets); ``auto`` or unset: chosen."""

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why it was chosen (shown by ``metaplug bench`` and in logs)."""

    threads: int
    reason: str


def parse_threads(value: object, where: str = ENV) -> int | None:
    """``value`` as a thread count: a positive integer, or ``None`` for ``auto``/empty."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if isinstance(value, bool) or count < 1:
        raise ConfigError(f"{where} must be a positive integer or 'auto', got {value!r}")
    return count


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); ``None``: unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(env: Mapping[str, str] | None = None, cgroup: Path = CGROUP_ROOT) -> tuple[int, str]:
    """The CPUs this process may use: affinity, cgroup quota and ``OMP_NUM_THREADS``; with the reason."""
    env = os.environ if env is None else env
    try:
        count, why = len(os.sched_getaffinity(0)), "CPUs in the process's affinity"
    except AttributeError:  # macOS, Windows
        count, why = os.cpu_count() or 1, "CPUs"
    limit = cgroup_cpu_limit(cgroup)
    if limit is not None and math.ceil(limit) < count:
        count, why = max(1, math.ceil(limit)), f"cgroup CPU quota {limit:g}"
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and 0 < int(omp) < count:
        count, why = int(omp), "OMP_NUM_THREADS"
    return count, f"{count} ({why})"


def load_average() -> float | None:
    """The 1-minute load average, ``None`` where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(
    requested: int | None = None,
    *,
    light: bool = False,
    env: Mapping[str, str] | None = None,
    load: float | None = None,
    cpus: tuple[int, str] | None = None,
) -> ThreadChoice:
    """The intra-op thread count for a backend (see the module's docstring for the order).

    ``load`` and ``cpus`` default to :func:`load_average` and :func:`usable_cpus`.
    """
    env = os.environ if env is None else env
    if requested is not None:
        return ThreadChoice(parse_threads(requested, "threads") or 1, "requested")
    from_env = parse_threads(env.get(ENV))
    if from_env is not None:
        return ThreadChoice(from_env, ENV)
    count, why = usable_cpus(env) if cpus is None else cpus
    if light:
        return ThreadChoice(1, "small model: one thread is fastest")
    load = load_average() if load is None else load
    if load is None:
        return ThreadChoice(count, f"usable CPUs {why}")
    idle = count - load
    threads = max(1, min(count, math.floor(idle + 0.5)))
    return ThreadChoice(threads, f"usable CPUs {why}, load average {load:.1f}")


__all__ = ["ENV", "ThreadChoice", "cgroup_cpu_limit", "choose_threads", "load_average", "parse_threads", "usable_cpus"]

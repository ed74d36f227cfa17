"""The C allocator told to keep freed memory for reuse (glibc), so that tensors stop page-faulting.

glibc's ``malloc`` serves large blocks with fresh ``mmap`` pages and gives freed memory at
the top of its heap back to the system. A conv4 step on the CPU allocates and frees tensors
of about 15 MB thousands of times, and each came back as new pages that the kernel zeroes
on first touch: 0.3 to 2.5 million page faults per torch ``omniglot-maml`` step, which made
it up to 1.36x slower (docs/benchmarks.md, "Freed memory kept for reuse").
:func:`keep_freed_memory` does what ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=...`` would at start-up: blocks up to glibc's largest threshold
(32 MiB) come from the heap, and the heap is not trimmed (below 2 GiB free at its top). The
peak memory is unchanged (measured); memory freed after the peak stays with the process
until it ends, unless :func:`release_freed_memory` gives it back (the batching calibration
does, after its trials). Larger blocks still come from ``mmap``: serving them from the heap as well
was faster on ResNet-12 but fragmented the heap (1.8x the peak).

Framework-free: both backends call it when they are created; ``METAPLUG_MALLOC=system``
leaves the allocator as it is, and so do glibc settings the user made
(``MALLOC_*_`` variables, ``GLIBC_TUNABLES``) and allocators other than glibc's.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

from metaplug.errors import ConfigError

ENV = "METAPLUG_MALLOC"
"""``keep`` (default): keep freed memory for reuse; ``system``: leave the allocator alone."""

CHOICES = ("keep", "system")

MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""

TRIM_THRESHOLD = 2**31 - 1
"""``M_TRIM_THRESHOLD``: the largest ``mallopt`` takes (an ``int``); the heap is trimmed only
when more than 2 GiB are free at its top."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")

_state: str | None = None


def keep_freed_memory(env: Mapping[str, str] | None = None) -> str:
    """Tell glibc's allocator to keep freed blocks of up to 32 MiB for reuse (once per
    process); returns what was done, also given by :func:`state`."""
    global _state
    if _state is not None:
        return _state
    env = os.environ if env is None else env
    choice = env.get(ENV, "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV} must be one of {', '.join(CHOICES)}, got {env[ENV]!r}")
    if choice == "system":
        _state = f"unchanged ({ENV}=system)"
    elif any(name in env for name in USER_SETTINGS) or "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        _state = "unchanged (glibc malloc settings in the environment)"
    elif "malloc" in env.get("LD_PRELOAD", ""):
        _state = "unchanged (an allocator in LD_PRELOAD)"
    else:
        _state = _tell_glibc()
    return _state


def release_freed_memory() -> bool:
    """Give the memory that glibc's allocator holds free back to the system (``malloc_trim``),
    after a one-off peak such as the batching calibration's trial of another mode, which
    would otherwise stay with the process (:func:`keep_freed_memory` stops trimming) until it
    ends. Later steps take back what they reuse once. ``False`` where the C library is not glibc."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim(0)
    return True


def state() -> str | None:
    """What :func:`keep_freed_memory` did in this process; ``None`` before it ran."""
    return _state


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def _tell_glibc() -> str:
    if not sys.platform.startswith("linux"):
        return f"unchanged (not glibc: {sys.platform})"
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return "unchanged (not glibc)"
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "unchanged (glibc refused the settings)"
    return "kept for reuse (glibc: blocks up to 32 MiB from the heap, not trimmed)"

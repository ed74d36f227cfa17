"""Freed memory is kept for reuse by glibc's allocator, unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metaplug.contract import allocator
from metaplug.errors import ConfigError

GLIBC = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION") or "")

USERS = "glibc malloc settings in the environment"

CHURN = """
import resource, sys
import numpy as np
from metaplug.contract import allocator
print(allocator.keep_freed_memory())
def churn():  # three blocks of 15 MiB, as a conv4 step's tensors, freed together
    blocks = [np.empty(15 * 2**18, dtype=np.float32) for _ in range(3)]
    for block in blocks:
        block.fill(1.0)
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(**env: str) -> tuple[str, int]:
    """What a fresh process's allocator did, and its page faults while churning 15 MiB blocks."""
    clean = {k: v for k, v in os.environ.items() if k != allocator.ENV and not k.startswith("MALLOC_")}
    clean["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-c", CHURN], capture_output=True, text=True, env={**clean, **env}, check=True
    )
    state, faults = done.stdout.strip().splitlines()
    return state, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_freed_blocks_come_back_without_page_faults() -> None:
    kept, faults_kept = page_faults()
    left, faults_left = page_faults(**{allocator.ENV: "system"})
    assert kept.startswith("kept for reuse") and left == "unchanged (METAPLUG_MALLOC=system)"
    assert faults_left > 5000  # each churn hands 45 MiB back to the system and faults it in again
    assert faults_kept < faults_left / 20


PEAK = """
import numpy as np
from metaplug.contract import allocator
def resident_mb():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) // 1024
allocator.keep_freed_memory()
peak = [np.ones(2**18, dtype=np.float32) for _ in range(300)]  # 300 MiB in 1 MiB blocks, then freed
kept = resident_mb()
del peak
freed = resident_mb()
print(kept, freed, allocator.release_freed_memory(), resident_mb())
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_a_one_off_peak_is_given_back_on_request() -> None:
    clean = {k: v for k, v in os.environ.items() if k != allocator.ENV and not k.startswith("MALLOC_")}
    clean["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, env=clean, check=True)
    kept, freed, released, after = done.stdout.split()
    assert released == "True"
    assert int(freed) > int(kept) - 50  # kept for reuse: freeing gives nothing back
    assert int(after) < int(kept) - 250  # released


def test_calibration_releases_the_trials_memory(monkeypatch, tmp_path) -> None:
    from metaplug.contract import calibration

    calls = []
    monkeypatch.setattr(calibration, "release_freed_memory", lambda: calls.append("released"))
    env = {"METAPLUG_CACHE_DIR": str(tmp_path)}

    def how() -> str:
        modes = ["loop", "vectorized"]
        return calibration.choose("auto", "loop", modes, {}, lambda _: lambda: None, tasks=4, env=env).how

    assert how() == "calibrated" and calls == ["released"]
    assert how() == "cached"
    assert calls == ["released"]  # nothing measured, nothing to give back


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({allocator.ENV: "system"}, "unchanged (METAPLUG_MALLOC=system)"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, f"unchanged ({USERS})"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, f"unchanged ({USERS})"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "unchanged (an allocator in LD_PRELOAD)"),
    ],
)
def test_the_users_choices_are_left_alone(env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", None)
    assert allocator.keep_freed_memory(env) == expected
    assert allocator.state() == expected


def test_a_bad_value_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", None)
    with pytest.raises(ConfigError, match="METAPLUG_MALLOC must be one of keep, system, got 'jemalloc'"):
        allocator.keep_freed_memory({allocator.ENV: "jemalloc"})


def test_backends_report_what_was_done() -> None:
    pytest.importorskip("torch")
    from metaplug_torch.backend import Backend

    assert Backend(device="cpu", threads=1).allocator == allocator.state() is not None

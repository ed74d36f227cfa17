"""``metaplug bench --batching`` times a chosen mode and reports what ``auto`` resolved to."""

from __future__ import annotations

import json
import subprocess
import sys


def bench(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "metaplug",
        "bench",
        "--backend",
        "torch",
        "--workload",
        "sinusoid-maml",
        "--steps",
        "1",
        "--warmup",
        "0",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True)


def test_bench_reports_the_resolved_mode_and_times_a_chosen_one():
    default, chosen = bench("--json"), bench("--json", "--batching", "loop")
    assert default.returncode == 0 and chosen.returncode == 0, default.stderr + chosen.stderr
    row, loop = json.loads(default.stdout), json.loads(chosen.stdout)
    assert (row["batching"], row["batching_used"]) == ("auto", "vectorized")  # the MLP
    assert (loop["batching"], loop["batching_used"]) == ("loop", "loop") and loop["median_ms"] > 0


def test_bench_with_an_unknown_mode_is_one_line_before_measuring():
    done = bench("--json", "--batching", "vmap")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "Error: --batching 'vmap' is not a batching mode of the backends measured "
        "(torch: auto, vectorized, loop, reference)"
    ]

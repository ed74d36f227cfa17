"""``metaplug bench``: time meta-training steps of every installed (algorithm, backend) pair."""

from __future__ import annotations

import json
import os

import click

from metaplug.cli import cli

COLUMNS = [
    "backend",
    "algorithm",
    "workload",
    "batching_used",
    "batching_by",
    "precision",
    "median_ms",
    "tasks_per_s",
    "threads",
    "peak_rss_mb",
    "data_wait_ms",
    "data_wait_pct",
    "sampler_peak_mb",
    "peak_gpu_mb",
    "gflop_per_s",
    "x_floor",
    "reference_median_ms",
    "speedup",
    "workers",
    "allreduce_ms",
    "one_worker_tasks_per_s",
    "worker_speedup",
    "data",
]


@cli.command("bench")
@click.option("--backend", help="Only this backend (default: every installed one).")
@click.option("--algorithm", help="Only this algorithm (default: every installed one).")
@click.option("--workload", help="Only this workload, e.g. omniglot-maml or sinusoid-reptile.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Timed meta-steps.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed steps first.")
@click.option("--reference", is_flag=True, help="Also time the plain per-task loop (batching='reference').")
@click.option(
    "--batching",
    help="Time this batching mode instead of the default: auto, vectorized, loop or (torch only) reference.",
)
@click.option(
    "--data-dir", type=click.Path(file_okay=False, exists=True), help="Dataset root (sets METAPLUG_DATA_DIR)."
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Meta-batches drawn ahead in the background (0: drawn in the loop).",
)
@click.option(
    "--data-workers", type=click.IntRange(min=1), default=1, show_default=True, help="Threads building batches."
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an algorithm option for every measured pair, e.g. --set inner_steps=10 (repeatable).",
)
@click.option(
    "--busy",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Start N CPU-bound processes that compete for the cores while measuring (a busy machine).",
)
@click.option("--timeout", type=click.FloatRange(min=1), help="Seconds allowed per measurement.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Time each pair on N worker processes (data-parallel) and on one, for the speed-up.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads of the backend (per worker with --nproc, where the cores are shared out; "
    "default: $METAPLUG_THREADS, else chosen for the machine and its load).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, one line per pair.")
def bench_command(
    backend: str | None,
    algorithm: str | None,
    workload: str | None,
    steps: int,
    warmup: int,
    reference: bool,
    batching: str | None,
    assignments: tuple[str, ...],
    busy: int,
    data_dir: str | None,
    prefetch: int,
    data_workers: int,
    timeout: float | None,
    nproc: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Benchmark meta-training steps of every installed (algorithm, backend) pair.

    Reports the median time per meta-step, tasks per second, peak memory and the time each
    step waited for its batch of episodes, each pair measured in its own process. Omniglot
    workloads use real data when it is found (METAPLUG_DATA_DIR) and random data of the same
    shapes otherwise; imagefolder workloads (named only) a generated 84x84 RGB image folder."""
    from metaplug.cli.discovery import format_table
    from metaplug.experiment.bench import bench_pair, busy_processes, plan
    from metaplug.experiment.config import parse_assignment

    if data_dir:
        os.environ["METAPLUG_DATA_DIR"] = data_dir
    pairs = plan(backend, algorithm, workload)
    if nproc > 1 and threads is None:
        threads = max(1, (os.cpu_count() or 1) // nproc)
    if batching is not None:
        check_batching(batching, sorted({pair.backend for pair in pairs}))
    overrides = dict(parse_assignment(a) for a in assignments)
    rows = []
    with busy_processes(busy):
        for pair in pairs:
            if not as_json:
                click.echo(f"measuring {pair.workload.name} on {pair.backend} ...", err=True)
            row = bench_pair(
                pair,
                steps,
                warmup,
                reference,
                timeout,
                batching,
                prefetch,
                data_workers,
                nproc,
                threads,
                overrides=overrides,
            )
            row["busy"] = busy
            rows.append(row)
            if as_json:
                click.echo(json.dumps(row))
    if as_json:
        return
    columns = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    click.echo(format_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows]))
    for r in rows:
        for note in ("error", "reference", "one_worker"):
            if note in r:
                click.echo(f"{r['workload']} on {r['backend']}: {note}: {r[note]}")


@cli.command("bench-child", hidden=True)
@click.argument("request")
def bench_child_command(request: str) -> None:
    """Measure one pair (run by 'metaplug bench' in a fresh process); prints one JSON line."""
    from metaplug.experiment.bench import child_main

    row = child_main(request)
    if row is not None:  # None: a launcher, or a worker other than rank 0
        click.echo(json.dumps(row))


def check_batching(batching: str, backends: list[str]) -> None:
    """``--batching`` must be a mode that at least one of the measured backends runs."""
    from metaplug.errors import ConfigError
    from metaplug.plugins.discovery import registry

    declared = {b: getattr(registry().load("backends", b), "batching_modes", None) for b in backends}
    modes = {b: m for b, m in declared.items() if m is not None}
    if not modes or any(batching in m for m in modes.values()):
        return
    known = "; ".join(f"{b}: {', '.join(m)}" for b, m in modes.items())
    raise ConfigError(f"--batching {batching!r} is not a batching mode of the backends measured ({known})")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)

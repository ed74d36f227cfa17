"""``metaplug plot RUN_DIR``: learning curves and, for sinusoid runs, the adaptation figure."""

from __future__ import annotations

from pathlib import Path

import click

from metaplug.cli import cli
from metaplug.experiment.config import MAX_SEED


@cli.command("plot")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the PNG files (default: RUN_DIR/plots).")
@click.option(
    "--seed", type=click.IntRange(min=0, max=MAX_SEED), help="Seed of the test task shown (default: the run's seed)."
)
def plot_command(run_dir: str, out: str | None, seed: int | None) -> None:
    """Draw PNG figures of a run (needs matplotlib: pip install 'metaplug[plot]')."""
    from metaplug.experiment import plotting
    from metaplug.experiment.metrics import FILENAME, read_rows
    from metaplug.experiment.runner import choose_checkpoint, load_run_config, restore

    plotting.pyplot()  # fail early, with the install hint, when matplotlib is missing
    run = Path(run_dir)
    cfg = load_run_config(run)
    folder = Path(out) if out else run / "plots"
    title = f"{cfg.algorithm.name} on {cfg.tasks.name} ({cfg.backend})"
    written = [plotting.learning_curves(read_rows(run / FILENAME), folder / "learning_curves.png", title)]
    which = choose_checkpoint(run)
    experiment, saved = restore(run, checkpoint=which, devices=1)
    if experiment.spec.problem == "regression" and experiment.spec.input_shape == (1,):
        batch = experiment.sampler("test", cfg.seed if seed is None else seed).sample(1)
        if {"amplitude", "phase"} <= set(batch.params):
            written.append(
                plotting.sinusoid_adaptation(
                    experiment.algorithm,
                    batch,
                    folder / "sinusoid_adaptation.png",
                    f"{title}\n{which} checkpoint (step {saved.step}), one test task",
                )
            )
    for path in written:
        click.echo(str(path))

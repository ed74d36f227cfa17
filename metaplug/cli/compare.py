"""``metaplug compare RUN...``: the settings that differ, the scores with 95% intervals, the curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from metaplug.cli import cli


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Also draw the runs' learning curves into this PNG (needs matplotlib: pip install 'metaplug[plot]').",
)
def compare_command(run_dirs: tuple[str, ...], as_json: bool, plot_path: str | None) -> None:
    """Compare runs: their settings (only those that differ) and held-out test scores, mean ± 95% CI.

    Scores come from 'metaplug evaluate' (RUN_DIR/evaluation.json) when it scored the test
    split, else from the test that 'metaplug train' ran after training (results.json).
    """
    from metaplug.cli.discovery import echo_json
    from metaplug.experiment import comparison, plotting

    if plot_path:
        plotting.pyplot()  # fail early, with the install hint, when matplotlib is missing
    runs = comparison.load_runs(comparison.check_runs(run_dirs))
    if plot_path:
        title = f"{len(runs)} runs" if len(runs) != 1 else runs[0].label
        plotting.compare_curves([(run.label, run.rows) for run in runs], Path(plot_path), title)
    if as_json:
        echo_json({**comparison.comparison(runs), **({"plot": plot_path} if plot_path else {})})
        return
    click.echo(settings_table(runs))
    click.echo()
    click.echo(scores_table(runs))
    if plot_path:
        click.echo(f"\nlearning curves: {plot_path}")


def settings_table(runs: list[Any]) -> str:
    """The settings that differ, one row each, one column per run."""
    from metaplug.cli.discovery import format_table
    from metaplug.experiment.comparison import differing_keys

    keys = differing_keys(runs)
    if not keys:
        same = "the run's settings" if len(runs) == 1 else "all runs have the same settings"
        return f"settings: {same} (see each run's config.toml)"
    rows = [[key, *(_value(run.config.get(key, "-")) for run in runs)] for key in keys]
    return "settings that differ:\n" + format_table(["setting", *(run.label for run in runs)], rows)


def scores_table(runs: list[Any]) -> str:
    """One row per run: steps, the checkpoint scored, episodes, each metric's mean ± 95% CI."""
    from metaplug.cli.discovery import format_table
    from metaplug.experiment.comparison import metric_names
    from metaplug.experiment.evaluation import format_score

    metrics = metric_names(runs)
    rows = []
    for run in runs:
        scored = run.scored
        checkpoint = f"{scored['checkpoint']} (step {scored['checkpoint_step']})" if scored else "-"
        scores = [format_score(m, run.scores[m]) if m in run.scores else "-" for m in metrics]
        rows.append(
            [
                run.label,
                _value(run.step),
                checkpoint,
                scored.get("source", "not scored yet"),
                _value(scored.get("episodes")),
                *scores,
            ]
        )
    headers = ["run", "steps", "checkpoint", "scored by", "episodes", *metrics]
    return "held-out test scores (mean ± 95% CI):\n" + format_table(headers, rows)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)

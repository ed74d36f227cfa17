"""``metaplug predict`` and ``metaplug export``: use a trained run on your own examples, or
ship its model."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from metaplug.cli import cli

FORMATS = ("safetensors", "torch-export", "onnx", "savedmodel")

checkpoint_option = click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    help="Weights to use: the best validation's or the last (default: best when the run has one).",
)


def restore_chosen(run_dir: str, checkpoint: str | None, device: str | None) -> tuple:
    """The run restored from ``checkpoint`` (default: best when it has one), and ``"best
    checkpoint, step N"`` to say which was used."""
    from metaplug.experiment.runner import choose_checkpoint, load_run_config, restore

    load_run_config(Path(run_dir))  # a missing or foreign directory is named before anything else
    which = choose_checkpoint(Path(run_dir), checkpoint)
    experiment, saved = restore(Path(run_dir), device, which, devices=1)  # one device scores and adapts
    return experiment, f"{which} checkpoint, step {saved.step}"


@cli.command("predict")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--support",
    required=True,
    type=click.Path(),
    help="Labelled examples: a folder of class folders of images, or a .csv (features, then targets or class).",
)
@click.option(
    "--query",
    "queries",
    required=True,
    multiple=True,
    type=click.Path(),
    help="Examples to predict: image files or folders, or a .csv of features (repeatable).",
)
@click.option("--steps", type=click.IntRange(min=0), help="Inner steps (default: the algorithm's test_inner_steps).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the predictions to this .csv file.")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@checkpoint_option
@click.option("--device", help="Run on this device instead of the run's (e.g. cpu).")
def predict_command(
    run_dir: str,
    support: str,
    queries: tuple[str, ...],
    steps: int | None,
    out: str | None,
    as_json: bool,
    checkpoint: str | None,
    device: str | None,
) -> None:
    """Adapt RUN_DIR's meta-learned model to a support set and predict the queries.

    Classification prints each query's predicted class (a support class folder's name or
    the CSV's class) and its probability for every class; regression prints the outputs.
    Uses the best checkpoint (by validation) when the run has one, else the last.
    """
    from metaplug.cli.discovery import echo_json
    from metaplug.experiment.files import write_text_atomic
    from metaplug.experiment.predict import predict

    experiment, used = restore_chosen(run_dir, checkpoint, device)
    rows = predict(experiment, support, queries, steps).rows()
    if out:
        write_text_atomic(Path(out), as_csv(rows))
    if as_json:
        echo_json(rows)
    elif not out:
        click.echo(as_csv(rows), nl=False)
    else:
        click.echo(f"{len(rows)} predictions written to {out} ({used})")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "format_", required=True, type=click.Choice(FORMATS), help="What to write.")
@click.option("--out", required=True, type=click.Path(), help="The file (or SavedModel folder) to write.")
@click.option(
    "--support",
    type=click.Path(),
    help="Adapt to this support set first (as predict's) and export the adapted model; "
    "without it, the meta-learned model itself.",
)
@click.option("--steps", type=click.IntRange(min=0), help="Inner steps with --support (default: test_inner_steps).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@checkpoint_option
@click.option("--device", help="Run on this device instead of the run's (e.g. cpu).")
def export_command(
    run_dir: str,
    format_: str,
    out: str,
    support: str | None,
    steps: int | None,
    force: bool,
    checkpoint: str | None,
    device: str | None,
) -> None:
    """Write RUN_DIR's model so that it predicts without metaplug installed.

    safetensors: the weights in the shared layout of docs/models.md (any backend).
    torch-export and onnx (checked with onnxruntime): from a torch run. savedmodel: from a
    TensorFlow run. Every artefact takes a float32 batch of inputs, channels first, and
    returns the outputs. Uses the best checkpoint (by validation) when the run has one, else the last.
    """
    from metaplug.experiment.predict import export

    experiment, used = restore_chosen(run_dir, checkpoint, device)
    written = export(experiment, format_, out, support, steps, force)
    what = "adapted to " + support if support else "as meta-learned"
    click.echo(f"wrote {written} ({format_}, {experiment.config.algorithm.name} model {what}, {used})")


def as_csv(rows: list[dict]) -> str:
    """The rows as CSV text with a header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["query"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()

"""``metaplug evaluate RUN_DIR``: the standard few-shot test protocol with 95% confidence intervals."""

from __future__ import annotations

from pathlib import Path

import click

from metaplug.cli import cli
from metaplug.cli.threads import threads_option
from metaplug.experiment.config import MAX_SEED
from metaplug.experiment.evaluation import EVALUATION_FILE


@cli.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--episodes", type=click.IntRange(min=1), help="Test episodes (default: the run's evaluation.episodes, 600)."
)
@click.option(
    "--steps", type=click.IntRange(min=0), help="Inner steps at test time (default: the algorithm's test_inner_steps)."
)
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option(
    "--seed", type=click.IntRange(min=0, max=MAX_SEED), help="Seed of the episodes (default: the run's seed)."
)
@click.option("--batch", type=click.IntRange(min=1), help="Episodes evaluated at once (default: the meta-batch size).")
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    help="Weights to evaluate: the best validation's or the last (default: best when the run has one).",
)
@click.option("--device", help="Evaluate on this device instead of the run's (e.g. cpu, cuda).")
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate_command(
    run_dir: str,
    episodes: int | None,
    steps: int | None,
    split: str,
    seed: int | None,
    batch: int | None,
    checkpoint: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Adapt a trained run to held-out episodes and report mean accuracy (or MSE) ± 95% CI.

    Uses the best checkpoint (by validation) when the run has one, else the last; says which.
    Also reports the loss before adaptation. Writes RUN_DIR/evaluation.json.
    """
    import numpy as np

    from metaplug.cli.discovery import echo_json
    from metaplug.errors import MetaplugError
    from metaplug.experiment.evaluation import describe_steps, evaluate_episodes, headline, summarize
    from metaplug.experiment.files import write_json_atomic
    from metaplug.experiment.runner import choose_checkpoint, load_run_config, restore

    load_run_config(Path(run_dir))  # a missing or foreign directory is named before anything else
    which = choose_checkpoint(Path(run_dir), checkpoint)
    experiment, saved = restore(Path(run_dir), device, which, devices=1)  # one device scores and adapts
    cfg = experiment.config
    episodes = episodes or cfg.evaluation.episodes
    steps = cfg.evaluation.steps if steps is None else steps
    seed = cfg.seed if seed is None else seed
    per_task = evaluate_episodes(
        experiment.algorithm, experiment.sampler(split, seed), episodes, batch or cfg.train.meta_batch_size, steps
    )
    for name, values in per_task.items():
        values = np.asarray(values, dtype=float)
        if name == "loss_before" and np.isnan(values).all():
            continue  # undefined without an inner loop (ProtoNets, R2-D2, ...), not an overflow
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise MetaplugError(
                f"evaluating step {saved.step} of {run_dir} gave a non-finite {name} on {bad} of {episodes} "
                "episodes (the model overflows); nothing was written"
            )
    result = {
        "run_dir": str(run_dir),
        "checkpoint": which,
        "step": saved.step,
        "algorithm": cfg.algorithm.name,
        "backend": cfg.backend,
        "tasks": cfg.tasks.name,
        "problem": experiment.spec.problem,
        "split": split,
        "episodes": episodes,
        "steps": steps,
        "seed": seed,
        **summarize(per_task),
    }
    write_json_atomic(Path(run_dir) / EVALUATION_FILE, result)
    if as_json:
        echo_json(result)
        return
    scores = {k: v for k, v in result.items() if isinstance(v, dict)}
    adapted = describe_steps(steps, cfg.algorithm.options)
    click.echo(
        f"{cfg.algorithm.name} on {cfg.tasks.name} ({cfg.backend}), {which} checkpoint (step {saved.step}): "
        f"{episodes} {split} episodes, {adapted}: {headline(scores, str(result['problem']))}"
    )

"""``metaplug train``: run, configure, dry-run or resume an experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from metaplug.cli import cli, ignore_further_interrupts, say_error
from metaplug.cli.threads import threads_option

OPTION_PATHS: dict[str, str] = {
    "backend": "backend",
    "algorithm": "algorithm.name",
    "tasks": "tasks.name",
    "model": "model.name",
    "optimizer": "optimizer.name",
    "lr": "optimizer.lr",
    "ways": "tasks.ways",
    "shots": "tasks.shots",
    "queries": "tasks.queries",
    "inner_steps": "algorithm.inner_steps",
    "test_inner_steps": "algorithm.test_inner_steps",
    "inner_lr": "algorithm.inner_lr",
    "meta_batch_size": "train.meta_batch_size",
    "iterations": "train.iterations",
    "seed": "seed",
    "log_every": "train.log_every",
    "val_every": "train.val_every",
    "val_tasks": "train.val_tasks",
    "checkpoint_every": "train.checkpoint_every",
    "test_tasks": "train.test_tasks",
    "monitor": "train.monitor",
    "patience": "train.patience",
    "data_dir": "data_dir",
    "device": "device",
    "nproc": "distributed.workers",
    "devices": "distributed.devices",
    "init_weights": "model.init_weights",
    "init_weights_strict": "model.init_weights_strict",
    "freeze": "algorithm.freeze",
    "freeze_during": "algorithm.freeze_during",
    "precision": "algorithm.precision",
}
"""Command-line option → configuration key (``section.key``)."""


@cli.command("train")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration; options override it."
)
@click.option("--backend", help="Backend (default: torch, else tensorflow, else the first installed).")
@click.option("--algorithm", help="Algorithm (default: maml). See 'metaplug list algorithms'.")
@click.option("--tasks", help="Task sampler (default: sinusoid). See 'metaplug list task-samplers'.")
@click.option(
    "--model",
    help="Model registered for the backend, see 'metaplug list models' (default: the tasks', mlp or conv4), "
    "or your own: module:function, a factory taking the task spec and returning a torch.nn.Module or keras.Model.",
)
@click.option("--optimizer", help="Outer optimizer (default: adam).")
@click.option("--lr", type=float, help="Outer learning rate (default: 0.001).")
@click.option("--ways", type=int, help="Classes per episode (classification tasks).")
@click.option("--shots", type=int, help="Support examples per class (or per regression task).")
@click.option("--queries", type=int, help="Query examples per class (or per regression task).")
@click.option("--inner-steps", type=int, help="Inner-loop steps during meta-training.")
@click.option("--test-inner-steps", type=int, help="Inner-loop steps when adapting at test time.")
@click.option("--inner-lr", type=float, help="Inner-loop learning rate.")
@click.option("--meta-batch-size", type=int, help="Tasks per meta-training step (default: 25).")
@click.option("--iterations", type=int, help="Meta-training steps.")
@click.option("--seed", type=int, help="Seed of the backend and the task samplers (default: 0).")
@click.option("--log-every", type=int, help="Steps per metrics row (mean over those steps).")
@click.option("--val-every", type=int, help="Validate every N steps (0: never).")
@click.option("--val-tasks", type=int, help="Validation episodes each time.")
@click.option("--checkpoint-every", type=int, help="Checkpoint every N steps (0: only at the end).")
@click.option("--test-tasks", type=int, help="Held-out test episodes scored after training (0: none).")
@click.option(
    "--monitor",
    help="Validation metric that picks the best checkpoint (default: accuracy for classification, else loss).",
)
@click.option(
    "--patience", type=int, help="Stop after N validations without improvement of the monitored metric (0: never)."
)
@click.option(
    "--log",
    "observers",
    multiple=True,
    metavar="NAME",
    help="Also send the run to this observer, e.g. --log tensorboard (repeatable; see 'metaplug list observers'). "
    "Also with --resume.",
)
@click.option(
    "--data-dir",
    help="Dataset root, passed to the task sampler (default: $METAPLUG_DATA_DIR; Omniglot in DATA_DIR/omniglot).",
)
@click.option(
    "--device",
    help="Device of the backend, e.g. cpu, cuda or cuda:1 (torch), cpu or gpu:0 "
    "(tensorflow); default: a GPU when the backend sees one. Also with --resume.",
)
@click.option(
    "--init-weights",
    metavar="PATH",
    help="Start the model from these weights: a .safetensors, .npz, torch .pt/.pth/.bin or Keras .weights.h5 "
    "file, or another run's directory (its best checkpoint, else its last). Names follow docs/models.md.",
)
@click.option(
    "--init-weights-strict/--no-init-weights-strict",
    default=None,
    help="Refuse init weights with missing, unexpected or mis-shaped entries (default), or load those that fit.",
)
@click.option(
    "--freeze",
    metavar="GLOB",
    multiple=True,
    help="Keep the model weights matching GLOB fixed, e.g. 'features.0.*' (repeatable; see --freeze-during).",
)
@click.option(
    "--freeze-during",
    type=click.Choice(["both", "training", "adaptation"]),
    help="When frozen weights stay fixed: in training, in adaptation (inner loops, fine-tuning) or both (default).",
)
@click.option(
    "--precision",
    metavar="full|tf32|bf16",
    help="Arithmetic of the model: full (default), tf32 (TensorFloat-32 on GPUs) or bf16 (mixed precision).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Set any configuration key, e.g. --set algorithm.first_order=true (repeatable).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Run directory (default: runs/<time>-<algorithm>-<tasks>-<backend>).",
)
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), help="Continue the run in this directory.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and exit.")
@click.option(
    "--format",
    "dry_run_format",
    type=click.Choice(["toml", "json"]),
    default="toml",
    show_default=True,
    help="Format of --dry-run.",
)
@click.option(
    "--nproc",
    type=int,
    help="Train on N local worker processes (data-parallel; torchrun or TF_CONFIG). Also with --resume.",
)
@click.option(
    "--devices",
    type=int,
    help="Train one process over N devices (TensorFlow's MirroredStrategy: the first N GPUs, or the CPU split "
    "in N); torch runs one device per process: use --nproc. Also with --resume.",
)
@click.option(
    "--workers",
    "cluster",
    metavar="HOST:PORT,...",
    help="TensorFlow multi-machine: every worker's address (sets TF_CONFIG); with --worker-index.",
)
@click.option("--worker-index", type=int, help="TensorFlow multi-machine: this machine's place in --workers.")
@threads_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; print only the results.")
def train_command(
    config_file: str | None,
    assignments: tuple[str, ...],
    run_dir: str | None,
    resume_dir: str | None,
    dry_run: bool,
    dry_run_format: str,
    quiet: bool,
    observers: tuple[str, ...],
    cluster: str | None,
    worker_index: int | None,
    **options: Any,
) -> None:
    """Meta-train an algorithm on a task distribution, then test it on held-out tasks.

    With no options this runs the default job: sinusoid regression with MAML on the
    first available backend (about a minute on a laptop CPU).
    """
    from metaplug.cli import INVOCATION
    from metaplug.experiment import runner, scaling

    progress = False if quiet else None
    scaling.set_cluster(cluster, worker_index)
    options["freeze"] = list(options["freeze"]) or None  # not given: () from click
    if resume_dir is not None:
        resumable = ("iterations", "device", "nproc", "devices")
        changed = sorted(k for k, v in options.items() if v is not None and k not in resumable)
        if config_file or assignments or run_dir or changed:
            given = (
                ["--" + k.replace("_", "-") for k in changed]
                + (["--config"] if config_file else [])
                + (["--set"] if assignments else [])
                + (["--run-dir"] if run_dir else [])
            )
            raise click.UsageError(
                "--resume continues a run as configured; only --iterations, --device, --log, --nproc and --devices "
                f"may change (remove {', '.join(given)})"
            )
        trainer = scaling.resume(
            Path(resume_dir),
            options.get("iterations"),
            progress,
            options.get("device"),
            options.get("nproc"),
            INVOCATION,
            observers,
            options.get("devices"),
        )
    else:
        cfg = runner.with_observers(resolve_config(config_file, options, assignments), observers)
        if dry_run:
            from metaplug.experiment.components import check

            cfg = check(cfg)
            click.echo(json.dumps(cfg.as_dict(), indent=2) if dry_run_format == "json" else cfg.to_toml(), nl=False)
            if dry_run_format == "json":
                click.echo()
            return
        trainer = scaling.start(cfg, Path(run_dir) if run_dir else None, progress, INVOCATION)
    if scaling.leads(trainer):  # one report, not one per worker
        report_init_weights(trainer.experiment.init_weights, quiet)
    quiet = quiet or not scaling.leads(trainer)
    report_batching(trainer.experiment.batching, quiet)
    if not quiet:
        what = "continuing" if resume_dir or trainer.step else "training"  # or a launcher restarted the group
        click.echo(
            f"{what} {_describe(trainer.cfg)} from step {trainer.step}; run directory {trainer.run_dir}", err=True
        )
    trainer.exit_on_second_interrupt = True
    try:
        result = trainer.run()
    except runner.TrainingInterrupted as exc:
        ignore_further_interrupts()
        if scaling.leads(trainer):  # rank 0 says it
            say_error(str(exc))
        scaling.leave(trainer, exc.exit_code)
        raise SystemExit(exc.exit_code) from None
    if scaling.leads(trainer):
        report(result, trainer, quiet)
    scaling.leave(trainer, 0)


def resolve_config(config_file: str | None, options: dict[str, Any], assignments: tuple[str, ...]) -> Any:
    """Defaults ← config file ← ``--set`` ← named options, with every fixed setting checked
    (the components' options are checked against the installed plugins by ``runner.start``)."""
    from metaplug.experiment import config

    raw = config.load_file(config_file) if config_file else config.defaults()
    for text in assignments:
        config.set_value(raw, *config.parse_assignment(text))
    for name, value in options.items():
        if value is not None:
            config.set_value(raw, OPTION_PATHS[name], value)
    return config.from_dict(raw)


def report_init_weights(loaded: Any, quiet: bool) -> None:
    """What ``--init-weights`` loaded, on stderr; a partial load is a warning even with ``--quiet``."""
    if loaded is None:
        return
    if not loaded.complete:
        click.echo(f"warning: {loaded.summary()}", err=True)
    elif not quiet:
        click.echo(loaded.summary(), err=True)


def report_batching(choice: Any, quiet: bool) -> None:
    """What ``batching = "auto"`` was measured to mean, on stderr (not when it was named or
    the rule decided without measuring)."""
    if choice is not None and choice.how in ("calibrated", "cached") and not quiet:
        click.echo(f"batching auto: {choice.describe()}", err=True)


def report(result: Any, trainer: Any, quiet: bool) -> None:
    from metaplug.experiment.evaluation import describe_steps, headline

    results = result.results
    if not quiet:
        click.echo(
            f"finished {result.step} steps in {results['elapsed_s']:.1f} s; results in "
            f"{result.run_dir / 'results.json'}"
        )
    if results.get("stopped_early"):
        click.echo(f"stopped early at step {result.step}: {trainer.tracker.describe()}")
    test = results.get("test")
    if test:
        scores = {k: v for k, v in test.items() if isinstance(v, dict)}
        steps = describe_steps(trainer.cfg.evaluation.steps, trainer.cfg.algorithm.options)
        click.echo(
            f"held-out test tasks ({test['episodes']} episodes, {steps}): {headline(scores, results['problem'])} "
            f"({test['checkpoint']} checkpoint, step {test['checkpoint_step']})"
        )


def _describe(cfg: Any) -> str:
    return f"{cfg.algorithm.name} on {cfg.tasks.name} ({cfg.backend})"

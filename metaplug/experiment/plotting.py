"""PNG figures of runs: learning curves and Finn et al.'s sinusoid adaptation figure.

Needs matplotlib, the optional extra ``metaplug[plot]``; it is imported only here,
when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.errors import MetaplugError
from metaplug.tasks.sinusoid import sinusoid

ADAPTATION_STEPS = (1, 10)


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend, or a one-line error saying what to install."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MetaplugError("plotting needs matplotlib: pip install 'metaplug[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(rows: Sequence[dict[str, Any]], out: Path, title: str) -> Path:
    """Loss (and accuracy, when logged) against step, training and validation rows, with a
    star at the best checkpoint's validation."""
    plt = pyplot()
    metrics = [m for m in ("loss", "accuracy") if any(r.get(m) is not None for r in rows)]
    if not metrics:
        raise MetaplugError("the run has no logged metrics to plot yet")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            points = [(r["step"], r[metric]) for r in rows if r.get("split") == split and r.get(metric) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                label = "training (mean since last row)" if split == "train" else "validation"
                ax.plot(steps, values, style, label=label, markersize=3)
        best = [r for r in rows if r.get("split") == "val" and r.get("best") and r.get(metric) is not None]
        if best:
            ax.plot(best[-1]["step"], best[-1][metric], "*", markersize=11, label="best checkpoint")
        losses = [r["loss"] for r in rows if r.get("loss") is not None]
        if metric == "loss" and min(losses) > 0 and max(losses) / min(losses) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("meta-training step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, out, plt)


def compare_curves(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], out: Path, title: str) -> Path:
    """Several runs' learning curves on shared axes: loss (and accuracy, when logged) against
    step, one colour per run; validation as a line with markers (a star at the best
    checkpoint's step), training as a faint line."""
    plt = pyplot()
    metrics = [m for m in ("loss", "accuracy") if any(r.get(m) is not None for _, rows in runs for r in rows)]
    if not metrics:
        raise MetaplugError("none of the runs has logged metrics to plot (metrics.jsonl)")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (label, rows) in enumerate(runs):
            colour = colours[i % len(colours)]
            for split, style, alpha in (("train", "-", 0.35), ("val", "o-", 1.0)):
                points = [(r["step"], r[metric]) for r in rows if r.get("split") == split and r.get(metric) is not None]
                if points:
                    steps, values = zip(*points, strict=True)
                    name = f"{label} (validation)" if split == "val" else f"{label} (training)"
                    ax.plot(steps, values, style, color=colour, alpha=alpha, label=name, markersize=3)
            best = [r for r in rows if r.get("split") == "val" and r.get("best") and r.get(metric) is not None]
            if best:  # the step of the best checkpoint
                ax.plot(best[-1]["step"], best[-1][metric], "*", color=colour, markersize=11)
        losses = [r["loss"] for _, rows in runs for r in rows if r.get("loss") is not None]
        if metric == "loss" and losses and min(losses) > 0 and max(losses) / min(losses) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("meta-training step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, out, plt)


def sinusoid_adaptation(
    algorithm: Any, batch: Any, out: Path, title: str, steps: Sequence[int] = ADAPTATION_STEPS
) -> Path:
    """Finn et al. (2017), figure 2: true curve, support points, and the model before
    and after ``steps`` gradient steps on the support set, for the first task of ``batch``."""
    plt = pyplot()
    amplitude, phase = float(batch.params["amplitude"][0]), float(batch.params["phase"][0])
    grid = np.linspace(-5.0, 5.0, 200, dtype=np.float32)[:, None]
    support_x, support_y = batch.support_x[0], batch.support_y[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid[:, 0], sinusoid(grid[:, 0], amplitude, phase), color="red", label="ground truth")
    for k, style in zip((0, *steps), (":", "--", "-", "-."), strict=False):
        prediction = algorithm.adapt(support_x, support_y, steps=k).predict(grid)
        label = "pre-update" if k == 0 else f"after {k} grad step{'s' if k != 1 else ''}"
        ax.plot(grid[:, 0], np.asarray(prediction)[:, 0], style, label=label)
    ax.plot(
        support_x[:, 0], support_y[:, 0], "^", color="purple", markersize=8, label=f"{len(support_x)} support points"
    )
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, out, plt)


def _save(fig: Any, out: Path, plt: Any) -> Path:
    import io

    from metaplug.experiment.files import write_bytes_atomic

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(Path(out), buffer.getvalue())
    return Path(out)

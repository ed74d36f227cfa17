"""Scoring an algorithm on held-out episodes: per-task metrics, mean and 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from metaplug.contract.interfaces import Algorithm, TaskSampler

Z_95 = 1.96

EVALUATION_FILE = "evaluation.json"
"""Where ``metaplug evaluate`` writes its result in the run directory."""


def mean_ci(values: np.ndarray) -> dict[str, float | None]:
    """``{"mean", "ci95", "std", "n"}`` with ``ci95 = 1.96 * std / sqrt(n)`` (sample std, ddof=1).

    ``ci95`` is ``None`` for fewer than two values; everything is ``None`` when no value is
    defined (all NaN).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = int(values.size)
    if n == 0 or np.isnan(values).all():  # e.g. loss_before of ProtoNets, which is undefined
        return {"mean": None, "ci95": None, "std": None, "n": n}
    std = float(np.std(values, ddof=1)) if n > 1 else None
    return {
        "mean": float(np.mean(values)),
        "ci95": Z_95 * std / math.sqrt(n) if std is not None else None,
        "std": std,
        "n": n,
    }


def evaluate_episodes(
    algorithm: Algorithm, sampler: TaskSampler, episodes: int, chunk: int, steps: int | None = None
) -> dict[str, np.ndarray]:
    """Per-task metrics of ``episodes`` episodes, drawn and evaluated ``chunk`` at a time."""
    parts: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < episodes:
        size = min(chunk, episodes - done)
        metrics = algorithm.evaluate(sampler.sample(size), steps=steps)
        for name, values in metrics.items():
            parts.setdefault(name, []).append(np.asarray(values, dtype=np.float64).reshape(size))
        done += size
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def summarize(per_task: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """:func:`mean_ci` of every metric."""
    return {name: mean_ci(values) for name, values in per_task.items()}


def headline(summary: Mapping[str, Mapping[str, Any]], problem: str) -> str:
    """One line: accuracy (classification) or MSE (regression) after adaptation, and before."""
    parts = []
    if problem == "classification" and "accuracy" in summary:
        parts.append(f"accuracy {_percent(summary['accuracy'])}")
    label = "MSE" if problem == "regression" else "loss"
    if "loss" in summary:
        parts.append(f"{label} after adaptation {_number(summary['loss'])}")
    if summary.get("loss_before", {}).get("mean") is not None:
        parts.append(f"before {_number(summary['loss_before'])}")
    return ", ".join(parts)


def describe_steps(steps: int | None, algorithm_options: Mapping[str, Any]) -> str:
    """``"10 inner steps"``: ``steps``, else the algorithm's test-time (or training) inner steps."""
    if steps is None:
        steps = algorithm_options.get("test_inner_steps")
        steps = algorithm_options.get("inner_steps") if steps is None else steps
    if steps is None:
        return "adapted"
    return f"{steps} inner step{'s' if steps != 1 else ''}"


def format_score(metric: str, stats: Mapping[str, Any]) -> str:
    """``"97.12% ± 0.50"`` for accuracy, ``"0.1385 ± 0.0192"`` for other metrics, ``"n/a"`` if undefined."""
    return _percent(stats) if metric == "accuracy" else _number(stats)


def _number(stats: Mapping[str, Any]) -> str:
    if stats.get("mean") is None:
        return "n/a"
    ci = f" ± {stats['ci95']:.3g}" if stats.get("ci95") is not None else ""
    return f"{stats['mean']:.4g}{ci}"


def _percent(stats: Mapping[str, Any]) -> str:
    if stats.get("mean") is None:
        return "n/a"
    ci = f" ± {100 * stats['ci95']:.2f}" if stats.get("ci95") is not None else ""
    return f"{100 * stats['mean']:.2f}%{ci}"

"""Side-by-side runs: the settings that differ and the held-out scores with their 95% intervals."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment.evaluation import EVALUATION_FILE
from metaplug.experiment.files import read_json
from metaplug.experiment.metrics import FILENAME, read_rows
from metaplug.experiment.rundir import CHECKPOINT_DIR, RESULTS_FILE
from metaplug.experiment.runner import load_run_config

NOT_COMPARED = frozenset({"train.observers"})
"""Settings that do not change what a run learns, left out of the settings that differ."""

METRIC_ORDER = ("accuracy", "loss", "loss_before")
"""Scores shown first, in this order; any other metric follows alphabetically."""


@dataclass
class RunSummary:
    """One run as ``metaplug compare`` shows it."""

    run_dir: Path
    label: str
    config: dict[str, Any]
    """The resolved configuration, flattened to ``section.key``."""
    step: int | None
    """Steps trained (the last checkpoint's), ``None`` before the first checkpoint."""
    problem: str | None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each metric's ``mean``, ``ci95``, ``std``, ``n`` on held-out test episodes."""
    scored: dict[str, Any] = field(default_factory=dict)
    """Where ``scores`` come from: ``source`` (``evaluate`` or ``train``), ``checkpoint``,
    ``checkpoint_step``, ``episodes``."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """``metrics.jsonl``: the learning curves."""

    def as_dict(self, keys: Sequence[str]) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "label": self.label,
            "config": {k: self.config.get(k) for k in keys},
            "step": self.step,
            "problem": self.problem,
            "scored": self.scored,
            "scores": self.scores,
        }


def load_runs(run_dirs: Sequence[Path]) -> list[RunSummary]:
    """Every run of ``run_dirs``, labelled by its folder name (by its path where names repeat)."""
    names = [Path(d).name for d in run_dirs]
    runs = []
    for run_dir, name in zip(run_dirs, names, strict=True):
        run_dir = Path(run_dir)
        config = flatten(load_run_config(run_dir).as_dict())
        step = checkpoints.saved_step(run_dir / CHECKPOINT_DIR)
        label = name if names.count(name) == 1 else str(run_dir)
        run = RunSummary(run_dir, label, config, step, None, rows=read_rows(run_dir / FILENAME))
        _add_scores(run)
        runs.append(run)
    return runs


def _add_scores(run: RunSummary) -> None:
    """The held-out test scores: ``metaplug evaluate``'s (``evaluation.json``, the full
    protocol) when it scored the test split, else those ``train`` wrote in ``results.json``."""
    evaluation = _read_optional(run.run_dir / EVALUATION_FILE)
    results = _read_optional(run.run_dir / RESULTS_FILE)
    run.problem = (evaluation or results or {}).get("problem")
    if evaluation and evaluation.get("split") == "test":
        run.scores = _stats(evaluation)
        run.scored = {
            "source": "evaluate",
            "checkpoint": evaluation.get("checkpoint", "last"),
            "checkpoint_step": evaluation.get("step"),
            "episodes": evaluation.get("episodes"),
        }
    elif results and isinstance(results.get("test"), Mapping):
        test = results["test"]
        run.scores = _stats(test)
        run.scored = {
            "source": "train",
            "checkpoint": test.get("checkpoint", "last"),
            "checkpoint_step": test.get("checkpoint_step", results.get("step")),
            "episodes": test.get("episodes"),
        }


def _read_optional(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = read_json(path, "results file")
    return data if isinstance(data, dict) else None


def _stats(section: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in section.items() if isinstance(v, Mapping) and "mean" in v}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algorithm.inner_lr": 0.01, ...}``; lists become tuples, so that they compare and hash."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def differing_keys(runs: Sequence[RunSummary]) -> list[str]:
    """The settings whose values are not the same in every run (a setting one run lacks differs),
    except those in :data:`NOT_COMPARED`."""
    keys = sorted({k for run in runs for k in run.config} - NOT_COMPARED)
    missing = object()
    return [k for k in keys if len({json.dumps(run.config.get(k, missing), default=repr) for run in runs}) > 1]


def metric_names(runs: Sequence[RunSummary]) -> list[str]:
    names = {name for run in runs for name in run.scores}
    return [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))


def comparison(runs: Sequence[RunSummary]) -> dict[str, Any]:
    """JSON-ready: the differing settings and each run's settings and scores."""
    keys = differing_keys(runs)
    return {"differing": keys, "metrics": metric_names(runs), "runs": [run.as_dict(keys) for run in runs]}


def check_runs(run_dirs: Sequence[str]) -> list[Path]:
    """The run directories, each named once."""
    paths = [Path(d) for d in run_dirs]
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise ConfigError(f"run {path} is given twice")
        seen.add(resolved)
    return paths

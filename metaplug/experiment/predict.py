"""Using a trained run: adapt its model to a support set and predict queries, or export it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.errors import ConfigError
from metaplug.experiment.components import Experiment
from metaplug.experiment.support import Examples, read_queries, read_support

HOST_FORMATS = ("safetensors",)
"""Formats the host writes itself (from ``AdaptedModel.weights``); backends add theirs."""
SUFFIXES = {"safetensors": ".safetensors", "torch-export": ".pt2", "onnx": ".onnx"}
"""The file name endings the formats' loaders expect (a SavedModel is a folder)."""


@dataclass(frozen=True)
class Predictions:
    """Query outputs: ``values`` ``(N, out)`` for regression, or ``probabilities`` ``(N, K)``
    over the support set's ``classes`` for classification."""

    names: list[str]
    classes: list[str]
    values: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One dict per query: ``query``, then ``prediction`` and ``p(<class>)`` each, or ``output_<i>``."""
        rows = []
        for name, row in zip(self.names, self.values, strict=True):
            if self.classes:
                probabilities = {f"p({c})": float(p) for c, p in zip(self.classes, row, strict=True)}
                rows.append({"query": name, "prediction": self.classes[int(np.argmax(row))], **probabilities})
            else:
                rows.append({"query": name, **{f"output_{i}": float(v) for i, v in enumerate(row)}})
        return rows


def adapt_to_support(experiment: Experiment, support: str | Path, steps: int | None) -> tuple[Any, Examples]:
    """The run's algorithm adapted to the support set at ``support`` (checked to fit the run)."""
    spec = experiment.spec
    examples = read_support(support, spec, experiment.train_sampler)
    assert examples.y is not None
    if spec.problem == "classification":
        ways = len(examples.classes)
        if ways < 2:
            raise ConfigError(f"support set {support} has {ways} class; classification needs at least 2")
        if ways > spec.output_size:
            raise ConfigError(
                f"support set {support} has {ways} classes; the run was trained for {spec.output_size}-way tasks "
                f"and predicts at most {spec.output_size} classes"
            )
    return experiment.algorithm.adapt(examples.x, examples.y, steps), examples


def predict(
    experiment: Experiment, support: str | Path, queries: Sequence[str | Path], steps: int | None = None
) -> Predictions:
    """Adapt to ``support`` and predict ``queries`` (see :mod:`metaplug.experiment.support`)."""
    adapted, examples = adapt_to_support(experiment, support, steps)
    query = read_queries(queries, experiment.spec, experiment.train_sampler)
    outputs = np.asarray(adapted.predict(query.x), dtype=np.float64)
    if not examples.classes:
        return Predictions(query.names, [], outputs)
    logits = outputs[:, : len(examples.classes)]  # a head wider than the support set's classes
    logits = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions(query.names, examples.classes, probabilities)


def export_formats(experiment: Experiment) -> tuple[str, ...]:
    """What ``export`` can write for this run: the host's formats and the backend's."""
    return HOST_FORMATS + tuple(getattr(experiment.backend, "export_formats", ()))


def export(
    experiment: Experiment,
    format: str,
    out: str | Path,
    support: str | Path | None = None,
    steps: int | None = None,
    force: bool = False,
) -> Path:
    """Write the run's model (adapted to ``support`` when given, else as meta-learned) as
    ``format`` to ``out``, atomically: nothing is left at ``out`` if it fails."""
    formats = export_formats(experiment)
    backend = experiment.config.backend
    if format not in formats:
        hint = " (train on torch for ONNX: TensorFlow has no maintained ONNX converter)" if format == "onnx" else ""
        raise ConfigError(f"a {backend} run exports {', '.join(formats)}, not {format!r}{hint}")
    out = Path(out)
    suffix = SUFFIXES.get(format)
    if suffix and out.suffix != suffix:
        raise ConfigError(f"--out of a {format} export ends in {suffix} (its loaders expect it), got {out.name}")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; remove it, choose another --out, or pass --force")
    if support is not None:
        model, examples = adapt_to_support(experiment, support, steps)
        example = examples.x
    else:
        model = initial_model(experiment)
        example = experiment.train_sampler.sample(1).query_x[0]
    if len(example) < 2:
        example = np.concatenate([example, example])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = staging / out.name
        if format == "safetensors":
            write_safetensors(model.weights(), written, experiment)
        else:
            export_with_backend(model, written, format, example)
        if written.is_file():
            umask = os.umask(0)
            os.umask(umask)
            written.chmod(0o666 & ~umask)
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(written, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def initial_model(experiment: Experiment) -> Any:
    """The meta-learned model, not adapted (``Algorithm.initial_model``)."""
    build = getattr(experiment.algorithm, "initial_model", None)
    if build is None:
        raise ConfigError(f"algorithm {experiment.config.algorithm.name!r} cannot export its model without --support")
    return build()


def export_with_backend(model: Any, path: Path, format: str, example: np.ndarray) -> None:
    """``model.export``, with an exporter's own failure as one line."""
    try:
        model.export(path, format, example)
    except ConfigError:
        raise
    except Exception as exc:  # the framework's exporter: report, do not crash
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"the {format} exporter cannot write this model: {type(exc).__name__}: {first}") from None


def write_safetensors(weights: dict[str, np.ndarray], path: Path, experiment: Experiment) -> None:
    """The weights (shared layout) as a safetensors file, described by its metadata."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise ConfigError("writing safetensors needs the safetensors package: pip install safetensors") from None
    cfg = experiment.config
    metadata = {
        "format": "metaplug shared layout (docs/models.md)",
        "model": str(cfg.model.name or experiment.spec.default_model),
        "algorithm": str(cfg.algorithm.name),
        "backend": str(cfg.backend),
        "input_shape": ",".join(str(s) for s in experiment.spec.input_shape),
        "output_size": str(experiment.spec.output_size),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path), metadata=metadata)

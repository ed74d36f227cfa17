"""Initial weights (``--init-weights``): read from a file or another run, matched by name to
the model's layout, loaded into an algorithm, with a report of what did not fit.

Sources, by what ``PATH`` is:

- a run directory: the model of its best checkpoint when it has one (the best validation),
  else of its last, as ``metaplug evaluate`` chooses; or a checkpoint folder
  (``RUN/best``, ``RUN/checkpoint``) for that one;
- ``*.safetensors``: read with the ``safetensors`` package's numpy API (no framework);
- ``*.npz``: numpy arrays, read with ``allow_pickle=False`` (a metaplug checkpoint's
  ``step-*.npz`` too);
- any other suffix: the installed backend that lists it in its ``weight_formats`` (the
  configured backend first) reads it with its ``read_weights(path)``: ``metaplug-torch``
  reads torch state dicts (``.pt``, ``.pth``, ``.bin``, with ``weights_only=True``),
  ``metaplug-tensorflow`` Keras weight files (``.weights.h5``). The host never imports a
  framework itself.

Names are the shared layout of docs/models.md (``features.0.conv.weight``). Entries named
``model.<name>`` (a metaplug checkpoint) are the model's weights and the file's other entries
are ignored; without any, every entry is a model weight (a torch ``state_dict()`` of the
model itself). Batch-norm running statistics (``running_mean``, ``running_var``,
``num_batches_tracked``) that the model does not have are ignored too: metaplug's models
normalise each task with its own statistics.
"""

from __future__ import annotations

import inspect
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.errors import ConfigError, MetaplugError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment.rundir import CHECKPOINT_DIR
from metaplug.plugins.registry import Registry

MODEL_PREFIX = "model."
RUNNING_STATISTICS = (".running_mean", ".running_var", ".num_batches_tracked")
HOST_FORMATS = (".safetensors", ".npz")
SHOWN = 4
"""Names shown per kind of problem in a report line."""


@dataclass(frozen=True)
class Mismatch:
    """A weight whose file entry has another shape than the model's."""

    name: str
    found: tuple[int, ...]
    expected: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name} is {self.found}, the model's {self.expected}"


@dataclass(frozen=True)
class WeightsReport:
    """What loading initial weights into a model did."""

    source: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...] = ()
    """Model weights the source lacks (they keep their fresh initialisation)."""
    unexpected: tuple[str, ...] = ()
    """Source entries the model lacks."""
    misshaped: tuple[Mismatch, ...] = ()
    ignored: tuple[str, ...] = field(default=(), repr=False)
    """Entries that are not model weights (a checkpoint's optimizer state, running statistics)."""

    @property
    def complete(self) -> bool:
        """Every model weight loaded and every source entry used."""
        return not (self.missing or self.unexpected or self.misshaped)

    def problems(self) -> str:
        """``2 missing (head.weight, head.bias); 1 mis-shaped (...)``, or ``""``."""
        parts = []
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.misshaped),
        ):
            if items:
                shown = ", ".join(str(i) for i in items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
                parts.append(f"{len(items)} {label} ({shown})")
        return "; ".join(parts)

    def summary(self) -> str:
        """One line: how many weights came from where, and what did not fit."""
        total = len(self.loaded) + len(self.missing) + len(self.misshaped)
        line = f"initial weights: {len(self.loaded)} of {total} model weights from {self.source}"
        return f"{line}; {self.problems()}" if self.problems() else line


def read(path: str | Path, backends: Iterable[Any] = (), model: Any = None) -> tuple[dict[str, np.ndarray], str]:
    """The named arrays at ``path`` and a description of the source (``run DIR, step N``...).

    ``backends`` are backend classes (the configured one first) whose ``read_weights`` may
    read a suffix the host does not know; ``model`` (the algorithm's ``model``) is passed to
    a ``read_weights`` that takes it, to name the entries as that model does.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        folder, which = _checkpoint_folder(path)
        try:
            saved = checkpoints.load(folder)
        except MetaplugError as exc:
            raise ConfigError(f"init weights: {exc}") from None
        return saved.arrays, f"{path} ({which}step {saved.step})"
    if not path.is_file():
        raise ConfigError(f"init weights file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return _read_safetensors(path), str(path)
    if name.endswith(".npz"):
        return _read_npz(path), str(path)
    reader = _reader(path, backends)
    try:
        takes_model = "model" in inspect.signature(reader.read_weights).parameters
        arrays = reader.read_weights(path, model=model) if takes_model else reader.read_weights(path)
    except MetaplugError:
        raise
    except Exception as exc:  # a plugin's reader: any failure is one line naming the file
        raise ConfigError(f"cannot read init weights {path}: {type(exc).__name__}: {_first_line(exc)}") from exc
    return {str(k): np.asarray(v) for k, v in arrays.items()}, str(path)


def formats(backends: Iterable[Any]) -> list[str]:
    """Every suffix that the host or one of ``backends`` reads."""
    found = [*HOST_FORMATS]
    for cls in backends:
        found += [s for s in getattr(cls, "weight_formats", ()) if s not in found]
    return found


def check_source(path: str | Path, backends: Iterable[Any]) -> Path:
    """``path`` resolved, after checking that it exists and that someone reads it (for
    ``metaplug train --dry-run`` and before anything is built)."""
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        _checkpoint_folder(resolved)
        return resolved
    if not resolved.is_file():
        raise ConfigError(f"init weights file {path} does not exist")
    name = resolved.name.lower()
    if not name.endswith(HOST_FORMATS):
        _reader(resolved, backends)
    return resolved


def match(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, np.ndarray], source: str
) -> tuple[dict[str, np.ndarray], WeightsReport]:
    """The entries of ``found`` that fit the model's weights ``expected`` (name: shape),
    and the report of the others (see the module docstring for the names)."""
    if any(k.startswith(MODEL_PREFIX) for k in found):
        ignored = [k for k in found if not k.startswith(MODEL_PREFIX)]
        entries = {k[len(MODEL_PREFIX) :]: v for k, v in found.items() if k.startswith(MODEL_PREFIX)}
    else:
        ignored, entries = [], dict(found)
    usable: dict[str, np.ndarray] = {}
    misshaped = []
    for name, shape in expected.items():
        if name not in entries:
            continue
        value = entries[name]
        if tuple(np.shape(value)) != tuple(shape):
            misshaped.append(Mismatch(name, tuple(np.shape(value)), tuple(shape)))
        else:
            usable[name] = value
    extra = [k for k in entries if k not in expected]
    ignored += [k for k in extra if k.endswith(RUNNING_STATISTICS)]
    report = WeightsReport(
        source=source,
        loaded=tuple(usable),
        missing=tuple(n for n in expected if n not in entries),
        unexpected=tuple(k for k in extra if not k.endswith(RUNNING_STATISTICS)),
        misshaped=tuple(misshaped),
        ignored=tuple(ignored),
    )
    return usable, report


def load(algorithm: Any, path: str | Path, strict: bool = True, backends: Iterable[Any] | None = None) -> WeightsReport:
    """Load the weights at ``path`` into ``algorithm``'s model through its ``state_dict`` and
    ``load_state_dict`` (so any algorithm on any backend), before training starts.
    ``backends``: the backend classes that may read framework files (default: every
    installed one, imported only when a file needs it). From Python::

        learner = metaplug.algorithm("maml", spec=sampler.spec, backend="torch")
        print(weights.load(learner, "pretrained.safetensors").summary())

    ``strict``: every model weight must be found with its shape and every entry used, or
    nothing is loaded and a one-line :class:`ConfigError` lists what did not fit; otherwise
    the fitting entries are loaded and the returned report lists the rest (at least one
    must fit).
    """
    if backends is None:
        from metaplug.plugins.discovery import registry

        backends = backend_classes(registry(), getattr(getattr(algorithm, "backend", None), "name", None))
    found, source = read(path, backends, getattr(algorithm, "model", None))
    state = algorithm.state_dict()
    model = {k[len(MODEL_PREFIX) :]: np.asarray(v) for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    usable, report = match({k: v.shape for k, v in model.items()}, found, source)
    if not usable:
        detail = report.problems() or "it holds no arrays"
        raise ConfigError(f"no weight of init weights {source} fits the model: {detail}")
    if strict and not report.complete:
        raise ConfigError(
            f"init weights {source} do not fit the model: {report.problems()}; set init_weights_strict = false "
            "(--no-init-weights-strict) to load the weights that fit"
        )
    updates = {}
    for name, value in usable.items():
        if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
            raise ConfigError(f"init weights {source}: entry {name!r} holds {value.dtype} values, not real numbers")
        updates[MODEL_PREFIX + name] = np.ascontiguousarray(value, dtype=model[name].dtype)
    algorithm.load_state_dict({**state, **updates})
    return report


def _checkpoint_folder(path: Path) -> tuple[Path, str]:
    """The checkpoint folder of ``path`` and which it is (``"best checkpoint, "``...): a run
    directory's best checkpoint when it has one, else its last (as ``metaplug evaluate``
    chooses), or ``path`` itself when it is a checkpoint folder (``RUN/best``)."""
    if (path / CHECKPOINT_DIR).is_dir():
        from metaplug.experiment.runner import CHECKPOINTS, choose_checkpoint  # the runner builds through here

        which = choose_checkpoint(path)
        folder, label = path / CHECKPOINTS[which], f"{which} checkpoint, "
    else:
        folder, label = path, ""
    if not checkpoints.exists(folder):
        raise ConfigError(f"init weights {path} is a directory but not a metaplug run (no checkpoint in it)")
    return folder, label


def _reader(path: Path, backends: Iterable[Any]) -> Any:
    """The first backend class whose ``weight_formats`` ends ``path``'s name (``backends`` may
    be a generator: the later ones are loaded only when needed)."""
    name = path.name.lower()
    seen = []
    for cls in backends:
        seen.append(cls)
        suffixes = getattr(cls, "weight_formats", ())
        if callable(getattr(cls, "read_weights", None)) and any(name.endswith(s) for s in suffixes):
            return cls
    raise ConfigError(
        f"cannot read init weights {path}: unknown format; readable here: {', '.join(formats(seen))} "
        "(or a metaplug run directory)"
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ConfigError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own error types (and TypeError for bfloat16)
        raise ConfigError(f"cannot read init weights {path} as safetensors: {_first_line(exc)}") from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle
        raise ConfigError(f"cannot read init weights {path} as .npz: not a zip archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as exc:  # pickled object arrays
        raise ConfigError(f"cannot read init weights {path}: {_first_line(exc)} (object arrays are refused)") from exc
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as exc:
        raise ConfigError(f"cannot read init weights {path} as .npz: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def backend_classes(reg: Registry, first: str | None) -> Iterator[Any]:
    """The installed backends' classes, ``first`` (the configured backend) first, each loaded
    (its framework imported) only when the iteration reaches it; a backend whose class
    cannot be loaded is left out (its own error shows where it is used)."""
    for name in sorted(reg.names("backends"), key=lambda n: (n != first, n)):
        try:
            yield reg.get("backends", name).load()
        except MetaplugError:
            continue


__all__ = ["Mismatch", "WeightsReport", "backend_classes", "check_source", "formats", "load", "match", "read"]

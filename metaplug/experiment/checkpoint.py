"""Checkpoints: the algorithm's arrays (``.npz``) plus a JSON record of everything else.

Layout of ``RUN_DIR/checkpoint/``::

    step-000500.npz    algorithm.state_dict(), loaded with allow_pickle=False
    step-000500.json   step, sampler states, metric accumulators, config, versions
    latest.json        pointer: both file names and their SHA-256 digests

Both step files are written first (each atomically), then ``latest.json`` is
replaced atomically: a crash at any point leaves the previous checkpoint complete
and loadable. Older step files are removed once the pointer has moved.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.experiment.files import (
    RunFileError,
    npz_bytes,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)

POINTER = "latest.json"
FORMAT = 1


class CheckpointError(RunFileError):
    """A checkpoint is missing, unreadable or corrupt."""


@dataclass
class Checkpoint:
    """One saved training state."""

    step: int
    arrays: dict[str, np.ndarray]
    """``algorithm.state_dict()``."""
    record: dict[str, Any]
    """JSON-ready: ``samplers``, ``progress`` (metric accumulators, elapsed time), ``config``, ``versions``."""


def save(folder: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` into ``folder`` so that it is complete or absent."""
    folder = Path(folder)
    stem = f"step-{checkpoint.step:06d}"
    weights = npz_bytes(checkpoint.arrays)
    record = json.dumps({"format": FORMAT, "step": checkpoint.step, **checkpoint.record}, indent=2).encode()
    write_bytes_atomic(folder / f"{stem}.npz", weights)
    write_bytes_atomic(folder / f"{stem}.json", record)
    write_json_atomic(
        folder / POINTER,
        {
            "format": FORMAT,
            "step": checkpoint.step,
            "arrays": f"{stem}.npz",
            "arrays_sha256": hashlib.sha256(weights).hexdigest(),
            "record": f"{stem}.json",
            "record_sha256": hashlib.sha256(record).hexdigest(),
        },
    )
    _remove_stale(folder, keep={f"{stem}.npz", f"{stem}.json", POINTER})


def exists(folder: Path) -> bool:
    return (Path(folder) / POINTER).is_file()


def load(folder: Path) -> Checkpoint:
    """The checkpoint ``latest.json`` points to, verified against its digests."""
    folder = Path(folder)
    if not (folder / POINTER).is_file():
        raise CheckpointError(f"no checkpoint in {folder} (missing {POINTER})")
    try:
        pointer = read_json(folder / POINTER, "checkpoint pointer")
        arrays_name, record_name = pointer["arrays"], pointer["record"]
        arrays_sha, record_sha = pointer["arrays_sha256"], pointer["record_sha256"]
    except RunFileError as exc:
        raise CheckpointError(str(exc)) from exc
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint pointer {folder / POINTER} is corrupt (no {exc})") from exc
    if pointer.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {folder} has format {pointer.get('format')!r}; this metaplug reads format {FORMAT}"
        )
    weights = _read_verified(folder / Path(arrays_name).name, arrays_sha)
    record_bytes = _read_verified(folder / Path(record_name).name, record_sha)
    try:
        record = json.loads(record_bytes)
        with np.load(io.BytesIO(weights), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint in {folder} is corrupt ({type(exc).__name__}: {exc})") from exc
    step = record.pop("step")
    record.pop("format", None)
    return Checkpoint(step=int(step), arrays=arrays, record=record)


def _read_verified(path: Path, sha256: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {path} is unreadable ({exc.strerror or exc})") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint file {path} is corrupt (SHA-256 does not match {POINTER})")
    return data


def _remove_stale(folder: Path, keep: set[str]) -> None:
    for path in folder.iterdir():
        stale_step = path.name.startswith("step-") and path.name not in keep
        stale_temp = path.name.startswith(".") and path.name.endswith(".tmp")
        if stale_step or stale_temp:
            with contextlib.suppress(OSError):
                path.unlink()

"""Checkpoints: the algorithm's arrays (``.npz``) plus a JSON record of everything else.

Layout of ``RUN_DIR/checkpoint/`` (the last checkpoint) and ``RUN_DIR/best/`` (the best
validation's)::

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
import math
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


def saved_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder`` from its pointer alone (``None`` if none is readable)."""
    try:
        return int(read_json(Path(folder) / POINTER, "checkpoint pointer")["step"])
    except (RunFileError, KeyError, TypeError, ValueError):
        return None


def load(folder: Path, attempts: int = 5) -> Checkpoint:
    """The checkpoint ``latest.json`` points to, verified against its digests.

    Safe while a run is writing: when the pointer moves on between reading it and reading
    the files it names (which the writer then removes), the new checkpoint is read.
    """
    folder = Path(folder)
    for attempt in range(attempts):
        pointer = _read_pointer(folder)
        try:
            return _load_pointed(folder, pointer)
        except CheckpointError:
            if attempt + 1 < attempts and _pointer_moved(folder, pointer):
                continue
            raise
    raise AssertionError("unreachable")


_POINTER_FIELDS = {"arrays": str, "arrays_sha256": str, "record": str, "record_sha256": str, "step": int}


def _read_pointer(folder: Path) -> dict[str, Any]:
    """``latest.json``, with every field present and of the right type."""
    path = folder / POINTER
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {folder} (missing {POINTER})")
    try:
        pointer = read_json(path, "checkpoint pointer")
    except RunFileError as exc:
        raise CheckpointError(str(exc)) from exc
    if not isinstance(pointer, dict):
        raise CheckpointError(f"checkpoint pointer {path} is corrupt (not a JSON object)")
    if pointer.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {folder} has format {pointer.get('format')!r}; this metaplug reads format {FORMAT}"
        )
    for name, kind in _POINTER_FIELDS.items():
        if name not in pointer:
            raise CheckpointError(f"checkpoint pointer {path} is corrupt (no {name!r})")
        value = pointer[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"checkpoint pointer {path} is corrupt ({name} must be a {kind.__name__}, got {value!r})"
            )
    return pointer


def _pointer_moved(folder: Path, pointer: dict[str, Any]) -> bool:
    try:
        return _read_pointer(folder) != pointer
    except CheckpointError:
        return False


def _load_pointed(folder: Path, pointer: dict[str, Any]) -> Checkpoint:
    weights = _read_verified(folder / Path(pointer["arrays"]).name, pointer["arrays_sha256"])
    record_bytes = _read_verified(folder / Path(pointer["record"]).name, pointer["record_sha256"])
    try:
        record = json.loads(record_bytes)
        step = record.pop("step")
        arrays = read_npz(weights)
    except (ValueError, OSError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"checkpoint in {folder} is corrupt ({type(exc).__name__}: {exc})") from exc
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint in {folder} is corrupt (step {step!r})")
    record.pop("format", None)
    return Checkpoint(step=step, arrays=arrays, record=record)


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` archive, without pickles, each one's declared
    shape checked against its size before anything is allocated."""
    arrays = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in _HEADER_READERS:
                    raise ValueError(f"{info.filename} has .npy format {version}, not 1.0 or 2.0")
                shape, _, dtype = _HEADER_READERS[version](member)
                declared = math.prod(shape) * dtype.itemsize
                if dtype.hasobject or declared != info.file_size - member.tell():
                    raise ValueError(f"{info.filename} declares shape {shape} of {dtype}, which its size does not hold")
            with archive.open(info) as member:
                name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    return arrays


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

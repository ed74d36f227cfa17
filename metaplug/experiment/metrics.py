"""``metrics.jsonl``: one JSON object per logged step (training means and validation scores)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from metaplug.contract.observers import RunObserver, RunStart
from metaplug.experiment.files import RunFileError, write_text_atomic

FILENAME = "metrics.jsonl"


class MetricsLog:
    """Appends rows to ``metrics.jsonl``; each row is flushed, and fsynced at checkpoints.

    A row cut short by a crash is ignored when reading, and :meth:`truncate` drops the
    rows after a checkpoint's step when a run resumes.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / FILENAME
        self._handle: Any = None

    def append(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(_finite_or_none(row)) + "\n"
        try:
            if self._handle is None:
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open across appends)
            self._handle.write(line)
            self._handle.flush()
        except OSError as exc:
            raise RunFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def sync(self) -> None:
        if self._handle is not None:
            try:
                os.fsync(self._handle.fileno())
            except OSError as exc:
                raise RunFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def truncate(self, step: int) -> None:
        """Keep only the rows up to ``step`` (atomically)."""
        self.close()
        rows = [row for row in read_rows(self.path) if row.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in rows))


class JsonlObserver(RunObserver):
    """The built-in observer ``jsonl``: training and validation rows in ``RUN_DIR/metrics.jsonl``,
    which ``metaplug plot`` and ``metaplug compare`` read."""

    def __init__(self) -> None:
        self.log: MetricsLog | None = None

    def on_run_start(self, run: RunStart) -> None:
        self.log = MetricsLog(run.run_dir)
        if run.resumed:
            self.log.truncate(run.step)

    def on_train_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._append({"step": step, "split": "train", **metrics})

    def on_validation(self, step: int, metrics: Mapping[str, float], best: bool) -> None:
        self._append({"step": step, "split": "val", **metrics, **({"best": True} if best else {})})

    def on_checkpoint(self, step: int, name: str) -> None:
        if self.log is not None:
            self.log.sync()

    def on_run_end(self, step: int, status: str, results: Mapping[str, Any]) -> None:
        if self.log is not None:
            self.log.close()
            if status == "discarded":
                with contextlib.suppress(OSError):
                    self.log.path.unlink()

    def _append(self, row: dict[str, Any]) -> None:
        if "elapsed" in row:
            row["elapsed"] = round(row.pop("elapsed"), 3)  # last, as in rows written before
        assert self.log is not None, "on_run_start was not called"
        self.log.append(row)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a metrics file (a missing file has none)."""
    return list(_rows(Path(path)))


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"cannot read {path}: {exc}") from exc
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut short by a crash
        if isinstance(row, dict):
            yield row


def _finite_or_none(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


class RunningMeans:
    """Means of the metrics of the steps since the last logged row (part of checkpoints)."""

    def __init__(self, sums: Mapping[str, float] | None = None, count: int = 0) -> None:
        self.sums = dict(sums or {})
        self.count = count

    def add(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += 1

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()} if self.count else {}

    def reset(self) -> None:
        self.sums, self.count = {}, 0

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

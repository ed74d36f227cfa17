"""Few-shot tasks from the user's own table: a CSV file (with a header) or a ``.npz`` of
1-D arrays, one per column.

``table``
    meta-regression: ``task_column`` names each row's task (a family of related
    regression problems: one patient, one machine, one city...); ``targets`` are the
    columns to predict and ``features`` (default: every other column) the inputs; every
    value of these columns must be a number.
    An episode is one task with ``shots`` support and ``queries`` query rows drawn
    without overlap.
``table-classes``
    N-way K-shot classification: ``class_column`` names each row's class; episodes pick
    ``ways`` classes and ``shots`` + ``queries`` rows of each.

The tasks (or classes) are split into train, val and test by ``split_column`` (a column
whose values are ``train``, ``val`` or ``test``) or else by ``split_ratio`` with
``split_seed``. With ``standardize`` the features (and with ``standardize_targets`` the
regression targets) are shifted and scaled by the mean and standard deviation of the
training split's rows only, whatever split is sampled, so no statistic of held-out tasks
leaks into training.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.contract.interfaces import SPLITS, EpisodeBatch, TaskSpec
from metaplug.contract.options import Options, option
from metaplug.errors import ConfigError, DatasetError
from metaplug.tasks.class_splits import ratio_split
from metaplug.tasks.episodes import (
    EpisodeSampler,
    LabelledArrays,
    NWayKShot,
    check_positive,
    rng_state,
    set_rng_state,
    split_rng,
)


@dataclass(frozen=True)
class Table:
    """A table's columns by name (CSV: strings; ``.npz``: the arrays as stored); ``lines``
    are the CSV rows' line numbers in the file, for messages."""

    path: Path
    columns: dict[str, np.ndarray]
    lines: np.ndarray | None = None

    def where(self, row: int) -> str:
        """Row ``row`` as the user finds it: ``line 7`` of a CSV, ``row 5`` of an ``.npz``."""
        return f"line {self.lines[row]}" if self.lines is not None else f"row {row}"

    def column(self, name: str, option: str) -> np.ndarray:
        """Column ``name``; one line listing the columns there are if it is missing."""
        if name not in self.columns:
            raise DatasetError(
                f"{self.path} has no column {name!r} (tasks.{option}); its columns: {', '.join(self.columns)}"
            )
        return self.columns[name]

    def numbers(self, name: str, option: str) -> np.ndarray:
        """Column ``name`` as finite float64; a value that is not names its row and column."""
        values = self.column(name, option)
        if values.dtype.kind in "biuf":
            numbers = values.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(numbers))
            if len(bad):
                raise DatasetError(
                    f"{self.path}, {self.where(int(bad[0]))}, column {name!r}: "
                    f"{values[bad[0]]!r} is not a finite number"
                )
            return numbers
        out = np.empty(len(values), dtype=np.float64)
        for row, text in enumerate(values):
            try:
                out[row] = float(text)
            except ValueError:
                out[row] = math.nan
            if not math.isfinite(out[row]):
                raise DatasetError(f"{self.path}, {self.where(row)}, column {name!r}: {str(text)!r} is not a number")
        return out


def read_table(path: Path) -> Table:
    """A CSV (header row, comma-separated) or ``.npz`` (1-D arrays of one length) table."""
    if not path.is_file():
        raise DatasetError(f"table {path} not found (tasks.path)")
    stat = path.stat()
    return _read_table(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_table(path_text: str, size: int, mtime: int) -> Table:
    path = Path(path_text)
    if path.suffix.lower() == ".npz":
        return _read_npz(path)
    return _read_csv(path)


def _read_csv(path: Path) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read table {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DatasetError(f"table {path} is empty; it needs a header row naming the columns")
    header = [h.strip() for h in rows[0]]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DatasetError(f"table {path} names column {duplicates[0]!r} twice")
    body = [(number, row) for number, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    for number, row in body:
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {number}: {len(row)} values, the header names {len(header)} columns")
    if not body:
        raise DatasetError(f"table {path} has a header but no rows")
    columns = {name: np.array([row[k].strip() for _, row in body]) for k, name in enumerate(header)}
    return Table(path, columns, np.array([number for number, _ in body]))


def _read_npz(path: Path) -> Table:
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read table {path}: {exc}") from exc
    if not columns:
        raise DatasetError(f"table {path} holds no arrays")
    lengths = {name: values.shape for name, values in columns.items()}
    first = next(iter(columns))
    for name, values in columns.items():
        if values.ndim != 1 or len(values) != len(columns[first]):
            raise DatasetError(
                f"{path}: every array must be one column of the same length; {name!r} has shape {lengths[name]}, "
                f"{first!r} {lengths[first]}"
            )
        if values.dtype.kind not in "biufUS":
            raise DatasetError(f"{path}: column {name!r} holds {values.dtype} values, not numbers or strings")
    return Table(path, columns)


def split_groups(
    table: Table,
    groups: np.ndarray,
    split_column: str | None,
    ratios: tuple[float, float, float],
    seed: int,
) -> dict[str, np.ndarray]:
    """Each split's rows (indices), by ``split_column`` or by a ratio split of the groups
    (tasks or classes) in ``groups``."""
    if split_column is not None:
        labels = table.column(split_column, "split_column").astype(str)
        bad = np.flatnonzero(~np.isin(labels, SPLITS))
        if len(bad):
            raise DatasetError(
                f"{table.path}, {table.where(int(bad[0]))}, column {split_column!r}: {labels[bad[0]]!r} "
                f"is not a split; use {', '.join(SPLITS)}"
            )
        return {s: np.flatnonzero(labels == s) for s in SPLITS}
    names = ratio_split(sorted(set(groups.tolist())), ratios, seed)
    return {s: np.flatnonzero(np.isin(groups, names[s])) for s in SPLITS}


def standardizer(values: np.ndarray, train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (1 where it is 0) of ``values[train_rows]`` per column."""
    train = values[train_rows]
    if len(train) == 0:
        return np.zeros(values.shape[1]), np.ones(values.shape[1])
    std = train.std(axis=0)
    return train.mean(axis=0), np.where(std > 0, std, 1.0)


def prepare(x: np.ndarray, scaling: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``x`` shifted and scaled by ``scaling`` (mean, std), or unchanged when it is ``None``."""
    x = np.asarray(x, dtype=np.float64)
    return x if scaling is None else (x - scaling[0]) / scaling[1]


@dataclass(frozen=True)
class TableOptions(Options):
    """Shared options of the table samplers."""

    path: str | None = option(None, path=True, help="the table: a CSV file with a header, or a .npz of 1-D arrays")
    features: tuple[str, ...] = option((), help="input columns (default: every column not otherwise used)")
    split_column: str | None = option(None, help="column of train/val/test values (default: split_ratio)")
    split_ratio: tuple[float, float, float] = option((0.7, 0.15, 0.15), minimum=0, help="train/val/test shares")
    split_seed: int = option(0, minimum=0, help="seed of the ratio split")
    standardize: bool = option(True, help="scale features by the training split's mean and std")


def _resolve_path(o: TableOptions, owner: str, data_dir: str | None) -> Path:
    if o.path is None:
        raise ConfigError(f"task sampler {owner!r} needs tasks.path, a CSV or .npz file, e.g. --set tasks.path=FILE")
    path = Path(o.path).expanduser()
    if not path.is_absolute() and data_dir is not None and not path.exists():
        path = Path(data_dir) / path
    return path


def _features(table: Table, o: TableOptions, used: list[str]) -> tuple[list[str], np.ndarray]:
    names = list(o.features) or [c for c in table.columns if c not in used]
    if not names:
        raise DatasetError(f"{table.path} has no feature columns besides {', '.join(used)}")
    for name in names:
        if name in used:
            raise ConfigError(f"tasks.features names {name!r}, which is the task, class, split or a target column")
    return names, np.stack([table.numbers(n, "features") for n in names], axis=1)


@dataclass(frozen=True)
class TableRegressionOptions(TableOptions):
    """Meta-regression over the tasks of a table."""

    task_column: str = option("task", help="column naming each row's task")
    targets: tuple[str, ...] = option(("y",), help="columns to predict")
    shots: int = option(10, minimum=1, help="support rows per task")
    queries: int = option(10, minimum=1, help="query rows per task")
    standardize_targets: bool = option(False, help="scale targets by the training split's mean and std")

    def validate(self) -> None:
        if not self.targets:
            raise ConfigError("targets must name at least one column")


class TableSampler:
    """Regression episodes, one task of the table each: ``x`` ``(T, shots, F)`` and ``y``
    ``(T, shots, len(targets))`` float32 (``F`` features); ``params["task"]`` is the task's
    index among the split's tasks (sorted by name)."""

    Options = TableRegressionOptions

    def __init__(self, split: str = "train", seed: int = 0, data_dir: str | None = None, **options: Any) -> None:
        o = self.Options.parse(options, owner="task sampler 'table'")
        self.rng = split_rng(seed, split)
        table = read_table(_resolve_path(o, "table", data_dir))
        tasks = table.column(o.task_column, "task_column").astype(str)
        used = [o.task_column, *o.targets, *([o.split_column] if o.split_column else [])]
        self.feature_names, x = _features(table, o, used)
        y = np.stack([table.numbers(n, "targets") for n in o.targets], axis=1)
        rows = split_groups(table, tasks, o.split_column, o.split_ratio, o.split_seed)
        self.scaling = standardizer(x, rows["train"]) if o.standardize else None
        x = self.prepare_features(x)
        if o.standardize_targets:
            mean, std = standardizer(y, rows["train"])
            y = (y - mean) / std
        mine = rows[split]
        self.task_names = sorted(set(tasks[mine].tolist()))
        if not self.task_names:
            raise DatasetError(f"the {split} split of {table.path} has no tasks; change split_ratio or split_column")
        self.members = [mine[tasks[mine] == name] for name in self.task_names]
        needed = o.shots + o.queries
        for name, members in zip(self.task_names, self.members, strict=True):
            if len(members) < needed:
                raise DatasetError(
                    f"task {name!r} ({o.task_column} in {table.path}) has {len(members)} rows, "
                    f"fewer than shots + queries = {needed}"
                )
        self.x, self.y = x.astype(np.float32), y.astype(np.float32)
        self.split, self.shots, self.queries = split, o.shots, o.queries
        self.spec = TaskSpec(
            problem="regression", input_shape=(x.shape[1],), output_size=y.shape[1], default_model="mlp"
        )

    def sample(self, num_tasks: int) -> EpisodeBatch:
        check_positive(num_tasks=num_tasks)
        chosen = self.rng.integers(len(self.members), size=num_tasks)
        rows = np.stack([self.rng.choice(self.members[t], self.shots + self.queries, replace=False) for t in chosen])
        x, y = self.x[rows], self.y[rows]
        return EpisodeBatch(
            support_x=np.ascontiguousarray(x[:, : self.shots]),
            support_y=np.ascontiguousarray(y[:, : self.shots]),
            query_x=np.ascontiguousarray(x[:, self.shots :]),
            query_y=np.ascontiguousarray(y[:, self.shots :]),
            problem="regression",
            params={"task": chosen.astype(np.int64)},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        set_rng_state(self.rng, state["rng"])

    def prepare_features(self, x: np.ndarray) -> np.ndarray:
        """Feature rows ``(N, F)`` as the episodes hold them: standardised with the training
        split's statistics (``metaplug predict`` applies it to your own rows)."""
        return prepare(x, self.scaling)


@dataclass(frozen=True)
class TableClassesOptions(TableOptions):
    """N-way K-shot classification over the classes of a table."""

    class_column: str = option("class", help="column naming each row's class")
    ways: int = option(5, minimum=2, help="classes per episode")
    shots: int = option(1, minimum=1, help="support rows per class")
    queries: int = option(5, minimum=1, help="query rows per class")


class TableClassesSampler(EpisodeSampler):
    """N-way K-shot episodes of table rows: ``x`` ``(T, ways*shots, F)`` float32."""

    Options = TableClassesOptions

    def __init__(self, split: str = "train", seed: int = 0, data_dir: str | None = None, **options: Any) -> None:
        o = self.Options.parse(options, owner="task sampler 'table-classes'")
        rng = split_rng(seed, split)
        table = read_table(_resolve_path(o, "table-classes", data_dir))
        labels = table.column(o.class_column, "class_column").astype(str)
        used = [o.class_column, *([o.split_column] if o.split_column else [])]
        self.feature_names, x = _features(table, o, used)
        rows = split_groups(table, labels, o.split_column, o.split_ratio, o.split_seed)
        self.scaling = standardizer(x, rows["train"]) if o.standardize else None
        x = self.prepare_features(x)
        mine = rows[split]
        self.class_names = sorted(set(labels[mine].tolist()))
        where = f" in the {split} split of {table.path}"
        count = len(self.class_names)
        if o.ways > count:
            raise ConfigError(f"ways={o.ways} exceeds the {count} classes{where}; choose ways <= {count}")
        needed = o.shots + o.queries
        for name in self.class_names:
            count = int(np.sum(labels[mine] == name))
            if count < needed:
                raise DatasetError(
                    f"class {name!r} ({o.class_column} in {table.path}) has {count} rows in the {split} split, "
                    f"fewer than shots + queries = {needed}"
                )
        ids = np.searchsorted(self.class_names, labels[mine])
        self.dataset = LabelledArrays(x[mine].astype(np.float32), ids)
        self.split = split
        self.episodes = NWayKShot(self.dataset, o.ways, o.shots, o.queries, rng, where=where)
        self.spec = TaskSpec(
            problem="classification",
            input_shape=(x.shape[1],),
            output_size=o.ways,
            num_classes=len(self.class_names),
            default_model="mlp",
        )

    def prepare_features(self, x: np.ndarray) -> np.ndarray:
        """Feature rows ``(N, F)`` as the episodes hold them: standardised with the training
        split's statistics (``metaplug predict`` applies it to your own rows)."""
        return prepare(x, self.scaling)


__all__ = ["Table", "TableClassesSampler", "TableSampler", "read_table"]

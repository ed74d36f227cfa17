"""The run's observers, called together: loaded by name, each failure named after its observer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from metaplug.contract.observers import RunObserver, RunStart
from metaplug.errors import MetaplugError, PluginError
from metaplug.plugins.registry import Registry


class Observers:
    """The observers a run names (``train.observers``), in that order."""

    def __init__(self, named: Sequence[tuple[str, RunObserver]]) -> None:
        self.named = list(named)

    @classmethod
    def load(cls, names: Sequence[str], reg: Registry) -> Observers:
        """Construct each registered observer of ``names`` (with no arguments)."""
        named = []
        for name in names:
            record = reg.get("observers", name)
            try:
                instance = record.load()()
            except MetaplugError:
                raise
            except Exception as exc:
                raise PluginError(f"cannot construct {record.describe()}: {type(exc).__name__}: {exc}") from exc
            if not isinstance(instance, RunObserver):
                raise PluginError(f"{record.describe()} is not a metaplug.contract.observers.RunObserver")
            named.append((name, instance))
        return cls(named)

    def run_start(self, run: RunStart) -> None:
        self._each("on_run_start", lambda o: o.on_run_start(run))

    def train_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._each("on_train_metrics", lambda o: o.on_train_metrics(step, dict(metrics)))

    def validation(self, step: int, metrics: Mapping[str, float], best: bool) -> None:
        self._each("on_validation", lambda o: o.on_validation(step, dict(metrics), best))

    def checkpoint(self, step: int, name: str) -> None:
        self._each("on_checkpoint", lambda o: o.on_checkpoint(step, name))

    def run_end(self, step: int, status: str, results: Mapping[str, Any]) -> None:
        """Tell every observer, even after one fails (each closes its files); then raise the first failure."""
        failure: MetaplugError | None = None
        for name, observer in self.named:
            try:
                _call(name, "on_run_end", observer, lambda o: o.on_run_end(step, status, dict(results)))
            except MetaplugError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _each(self, method: str, call: Callable[[RunObserver], None]) -> None:
        for name, observer in self.named:
            _call(name, method, observer, call)


def _call(name: str, method: str, observer: RunObserver, call: Callable[[RunObserver], None]) -> None:
    try:
        call(observer)
    except MetaplugError:
        raise
    except Exception as exc:
        raise PluginError(f"observer {name!r} failed in {method}: {type(exc).__name__}: {exc}") from exc

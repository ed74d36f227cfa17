"""Checks every component passes, whatever its kind: record, light entry point, lazy loading,
declared options."""

from __future__ import annotations

import sys
import typing
from typing import Any, ClassVar

import pytest

from metaplug.contract.options import options_of
from metaplug.contract.records import Component, validate
from metaplug.plugins.discovery import discovery, registry
from metaplug.testing.probe import FRAMEWORKS, run_probe

PER_BACKEND = ("algorithms", "optimizers", "models")
"""Kinds registered once per backend implementation."""


class ComponentConformance:
    """Base of the conformance classes; subclasses set :attr:`kind` and name the component."""

    kind: ClassVar[str] = ""
    """``"algorithms"``, ``"task-samplers"``, ``"optimizers"``, ``"backends"``, ``"observers"``
    or ``"models"`` (set by the base class)."""
    backend: ClassVar[str | None] = None
    """Algorithms, optimizers and models: the backend whose implementation is tested."""

    @classmethod
    def component_name(cls) -> str:
        """The name under test (each kind's class attribute: ``algorithm``, ``sampler``, ...)."""
        raise NotImplementedError

    def record(self) -> Component:
        """The registered record of the component under test."""
        backend = self.backend if self.kind in PER_BACKEND else None
        return registry().get(self.kind, self.component_name(), backend)

    def load(self) -> Any:
        """The implementation (class or factory)."""
        return self.record().load()

    def _probe(self) -> dict[str, Any]:
        record = self.record()
        return run_probe(record.plugin, self.kind, record.name, self.backend if record.backends else None)

    def test_record_is_complete_and_valid(self) -> None:
        record = self.record()
        assert validate(record, self.kind) == record
        assert record.plugin and record.distribution, "the record was not stamped by discovery"
        plugin = next(p for p in discovery().plugins if p.name == record.plugin)
        assert plugin.error is None, f"plugin {plugin.name!r} has a discovery error: {plugin.error}"
        assert record.summary.strip() == record.summary, "summary has surrounding whitespace"
        assert len(record.summary) <= 120, f"summary is {len(record.summary)} characters; keep it to one short line"
        if self.kind in PER_BACKEND:
            assert self.backend in record.backends

    def test_entry_point_module_imports_no_framework(self) -> None:
        report = self._probe()
        assert report["before"] == [], f"the host imported {report['before']} at start-up"
        assert report["after_entry_module"] == [], (
            f"importing the entry-point module {report['entry_module']} imported {report['after_entry_module']}; "
            f"import {', '.join(FRAMEWORKS)} only inside the implementation modules"
        )
        assert report["after_discovery"] == [], (
            f"running discovery imported {report['after_discovery']}; hooks must only register records"
        )
        assert report["plugin_error"] is None, f"discovery reported: {report['plugin_error']}"

    def test_implementation_loads_lazily(self) -> None:
        report = self._probe()
        assert not report["target_imported_before_load"], (
            f"{report['target_module']} was imported by discovery; name it with target='module:Attr' "
            f"and do not import it from the entry-point module"
        )
        implementation = self.load()
        assert callable(implementation), f"target {self.record().target!r} is not callable"
        if report["target_module"]:
            assert report["target_module"] in sys.modules, "record.load() did not import the target module"

    def build_with_defaults(self) -> None:
        """Build the component with no options (algorithms: through ``build_algorithm``);
        nothing for kinds whose defaults other checks already use."""

    def test_declared_options_have_working_defaults(self) -> None:
        declared = options_of(self.load())
        if declared is None:
            pytest.skip("the component declares no Options (its options are the keyword parameters of __init__)")
        annotated = [
            name for name, hint in typing.get_type_hints(declared).items() if typing.get_origin(hint) is not ClassVar
        ]
        described = [option.name for option in declared.describe()]
        assert sorted(described) == sorted(annotated), (
            f"{declared.__name__}.describe() lists {described}, the class annotates {annotated}: "
            f"decorate every Options subclass with @dataclass(frozen=True) and make fields with option()"
        )
        defaults = declared()  # validates every default
        assert declared.parse({}) == defaults
        assert {o.name: o.default for o in declared.describe()} == defaults.as_dict(), (
            "describe() shows defaults other than the ones the options take"
        )
        self.build_with_defaults()

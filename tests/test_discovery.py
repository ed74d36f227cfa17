"""Discovery against real installed distributions: lazy loading, broken plugins, duplicates, blocking."""

from __future__ import annotations

import sys

import pytest

from metaplug.plugins import discovery as plugins
from metaplug.errors import BackendNotSupportedError, ConfigError, PluginError, UnknownComponentError
from plugin_factory import algorithm_plugin, write_plugin


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.delenv("METAPLUG_PLUGINS", raising=False)
    monkeypatch.delenv("METAPLUG_DISABLE_PLUGINS", raising=False)
    return path


def plugin_named(found: plugins.Discovery, name: str) -> plugins.PluginInfo:
    return next(p for p in found.plugins if p.name == name)


def test_builtin_task_samplers_go_through_the_hooks(site):
    found = plugins.discover()
    builtin = plugin_named(found, "metaplug")
    assert builtin.components == {"task-samplers": ["sinusoid", "omniglot"]}
    assert builtin.hooks == ["register_task_samplers"]
    record = found.registry.get("task-samplers", "sinusoid")
    assert record.plugin == "metaplug" and record.problems == ("regression",)


def test_external_plugin_registers_lazily(site):
    algorithm_plugin(site, "lazy_plugin", distribution="metaplug-lazy")
    found = plugins.discover()
    info = plugin_named(found, "lazy_plugin")
    assert (info.distribution, info.version, info.error) == ("metaplug-lazy", "1.0.0", None)
    assert info.components == {"algorithms": ["testalgo"]}
    record = found.registry.get("algorithms", "testalgo", backend="fakeb")
    assert record.distribution == "metaplug-lazy 1.0.0"
    assert "lazy_plugin_impl" not in sys.modules
    assert record.load().__name__ == "Algorithm"
    assert "lazy_plugin_impl" in sys.modules


def test_plugin_that_fails_to_import_is_reported_and_skipped(site):
    write_plugin(site, "broken_import", "import no_such_module_anywhere\n")
    algorithm_plugin(site, "healthy_plugin")
    found = plugins.discover()
    broken = plugin_named(found, "broken_import")
    assert broken.error == "ModuleNotFoundError: No module named 'no_such_module_anywhere'"
    assert broken.distribution == "metaplug-broken-import"
    assert found.registry.get("algorithms", "testalgo", backend="fakeb").plugin == "healthy_plugin"


def test_plugin_whose_hook_raises_registers_nothing(site):
    write_plugin(site, "raising_hook", '''
        from metaplug import Component, hookimpl

        @hookimpl
        def register_task_samplers(register):
            register(Component(name="half", summary="s", target="m:C", problems=("regression",)))
            raise RuntimeError("database unreachable\\nsecond line")
    ''')
    found = plugins.discover()
    assert plugin_named(found, "raising_hook").error == "RuntimeError: database unreachable"
    assert "half" not in found.registry.names("task-samplers")


def test_misspelled_hook_fails_loudly(site):
    write_plugin(site, "typo_hook", '''
        from metaplug import hookimpl

        @hookimpl
        def register_algoritms(register):
            pass
    ''')
    info = plugin_named(plugins.discover(), "typo_hook")
    assert info.error.startswith("PluginValidationError") and "register_algoritms" in info.error


def test_invalid_record_is_reported(site):
    write_plugin(site, "bad_record", '''
        from metaplug import Component, hookimpl

        @hookimpl
        def register_algorithms(register):
            register(Component(name="Bad Name", summary="", target="nocolon", problems=("vision",)))
    ''')
    error = plugin_named(plugins.discover(), "bad_record").error
    for fragment in ("'Bad Name'", "summary", "target", "backends", "problems"):
        assert fragment in error


def test_duplicate_component_names_both_distributions(site):
    algorithm_plugin(site, "first_dup", name="dup", distribution="metaplug-first")
    algorithm_plugin(site, "second_dup", name="dup", distribution="metaplug-second")
    found = plugins.discover()
    assert "duplicates" in plugin_named(found, "second_dup").error
    with pytest.raises(PluginError) as excinfo:
        found.registry.get("algorithms", "dup", backend="fakeb")
    message = str(excinfo.value)
    assert "metaplug-first 1.0.0" in message and "metaplug-second 1.0.0" in message


def test_same_name_on_different_backends_is_not_a_duplicate(site):
    algorithm_plugin(site, "on_a", name="shared", backends='"backend-a",')
    algorithm_plugin(site, "on_b", name="shared", backends='"backend-b",')
    reg = plugins.discover().registry
    assert reg.backends_for("algorithms", "shared") == ["backend-a", "backend-b"]
    assert reg.get("algorithms", "shared", backend="backend-b").plugin == "on_b"
    with pytest.raises(ConfigError, match="several backends"):
        reg.get("algorithms", "shared")


def test_disable_plugins_by_entry_point_or_distribution(site, monkeypatch):
    algorithm_plugin(site, "blocked_one", name="one")
    algorithm_plugin(site, "blocked_two", name="two", distribution="metaplug-second-dist")
    monkeypatch.setenv("METAPLUG_DISABLE_PLUGINS", "blocked_one, METAPLUG-SECOND-DIST")
    found = plugins.discover()
    assert plugin_named(found, "blocked_one").disabled and plugin_named(found, "blocked_two").disabled
    assert {"one", "two"}.isdisjoint(found.registry.names("algorithms"))


def test_only_named_plugins_load(site, monkeypatch):
    algorithm_plugin(site, "wanted", name="wanted-algo")
    algorithm_plugin(site, "unwanted", name="unwanted-algo")
    monkeypatch.setenv("METAPLUG_PLUGINS", "wanted")
    found = plugins.discover()
    assert found.registry.names("algorithms") == ["wanted-algo"]
    assert plugin_named(found, "unwanted").disabled
    assert found.registry.names("task-samplers") == ["omniglot", "sinusoid"]  # built-ins always load


def test_lookup_errors_suggest_and_list_backends(site):
    algorithm_plugin(site, "lookup_plugin", name="protonet")
    reg = plugins.discover().registry
    with pytest.raises(UnknownComponentError, match=r"unknown algorithm 'protonett'\. Did you mean 'protonet'\?"):
        reg.get("algorithms", "protonett")
    with pytest.raises(BackendNotSupportedError, match="not available for backend 'jax'; it supports: fakeb"):
        reg.get("algorithms", "protonet", backend="jax")
    with pytest.raises(ConfigError, match="Did you mean 'task-samplers'"):
        reg.names("task-sampler-s")


def test_load_failure_names_the_component_and_plugin(site):
    write_plugin(site, "missing_target", '''
        from metaplug import Component, hookimpl

        @hookimpl
        def register_backends(register):
            register(Component(name="ghost", summary="No such module.", target="ghost_backend_module:Ghost"))
    ''')
    record = plugins.discover().registry.get("backends", "ghost")
    with pytest.raises(PluginError, match=r"cannot load backend 'ghost' from plugin 'missing_target'.*ModuleNotFoundError"):
        record.load()

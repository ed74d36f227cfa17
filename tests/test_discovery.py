"""Discovery against real installed distributions: lazy loading, broken plugins, duplicates, blocking."""

from __future__ import annotations

import sys

import pytest
from plugin_factory import algorithm_plugin, write_plugin

import metaplug
from metaplug.errors import BackendNotSupportedError, ConfigError, PluginError, UnknownComponentError
from metaplug.plugins import discovery as plugins

STANDARD_BENCHMARKS = ["mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub"]
OWN_DATA = ["image-folder", "table", "table-classes"]


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
    assert builtin.components == {
        "task-samplers": ["sinusoid", "omniglot", *STANDARD_BENCHMARKS, *OWN_DATA],
        "observers": ["jsonl"],
    }
    assert builtin.hooks == ["register_observers", "register_task_samplers"]
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
    write_plugin(
        site,
        "raising_hook",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_task_samplers(register):
            register(Component(name="half", summary="s", target="m:C", problems=("regression",)))
            raise RuntimeError("database unreachable\\nsecond line")
    """,
    )
    found = plugins.discover()
    assert plugin_named(found, "raising_hook").error == "RuntimeError: database unreachable; second line"
    assert "half" not in found.registry.names("task-samplers")


def test_misspelled_hook_fails_loudly_with_a_suggestion(site):
    write_plugin(
        site,
        "typo_hook",
        """
        from metaplug import hookimpl

        @hookimpl
        def register_algorithm(register):
            pass
    """,
    )
    info = plugin_named(plugins.discover(), "typo_hook")
    assert info.error.startswith(
        "PluginValidationError: unknown hook 'register_algorithm'. Did you mean 'register_algorithms'?"
    )
    assert "\n" not in info.error and "<module" not in info.error


def test_wrong_argument_name_shows_the_whole_cause(site):
    write_plugin(
        site,
        "bad_argument",
        """
        from metaplug import hookimpl

        @hookimpl
        def register_algorithms(registr):
            pass
    """,
    )
    info = plugin_named(plugins.discover(), "bad_argument")
    assert info.error == (
        "PluginValidationError: Plugin 'bad_argument' for hook 'register_algorithms'; "
        "hookimpl definition: register_algorithms(registr); "
        "Argument(s) {'registr'} are declared in the hookimpl but can not be found in the hookspec"
    )
    assert type(info.exception).__name__ == "PluginValidationError"


def test_function_named_like_a_hook_without_hookimpl_is_a_warning(site):
    write_plugin(
        site,
        "forgot_marker",
        """
        from metaplug import Component, hookimpl

        def register_algorithms(register):
            register(Component(name="never", summary="s", target="m:C", backends=("b",), problems=("regression",)))

        @hookimpl
        def register_task_samplers(register):
            register(Component(name="marked", summary="s", target="m:C", problems=("regression",)))
    """,
    )
    write_plugin(site, "no_hooks_at_all", "def helper():\n    pass\n")
    found = plugins.discover()
    info = plugin_named(found, "forgot_marker")
    assert info.ok and info.hooks == ["register_task_samplers"]
    assert info.warnings == ["register_algorithms() is not marked with @metaplug.hookimpl, so metaplug never calls it"]
    assert info.as_dict()["warnings"] == info.warnings
    assert "never" not in found.registry.names("algorithms")
    (warning,) = plugin_named(found, "no_hooks_at_all").warnings
    assert warning.startswith("module no_hooks_at_all has no function marked with @metaplug.hookimpl")


def test_plugin_raising_a_base_exception_at_import_is_skipped(site):
    write_plugin(site, "exits_at_import", "import sys\nsys.exit('plugin gave up')\n")
    algorithm_plugin(site, "survivor")
    found = plugins.discover()
    assert plugin_named(found, "exits_at_import").error == "SystemExit: plugin gave up"
    assert found.registry.get("algorithms", "testalgo", backend="fakeb").plugin == "survivor"


def test_failed_lookup_names_the_plugins_that_failed_to_load(site, monkeypatch):
    monkeypatch.setenv("METAPLUG_PLUGINS", "myalgo,other_algo")
    write_plugin(site, "myalgo", "import no_such_dependency_xyz\n", distribution="metaplug-myalgo", version="0.1.0")
    algorithm_plugin(site, "other_algo", name="otheralgo")
    reg = plugins.discover().registry
    failure = (
        "plugin 'myalgo' (metaplug-myalgo 0.1.0) failed to load: "
        "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    )
    with pytest.raises(UnknownComponentError) as excinfo:
        reg.get("algorithms", "myalgo")
    assert str(excinfo.value) == f"unknown algorithm 'myalgo'. Available: otheralgo; {failure}"
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)
    with pytest.raises(BackendNotSupportedError) as excinfo:
        reg.get("algorithms", "otheralgo", backend="jax")
    assert str(excinfo.value).endswith(f"it supports: fakeb; {failure}")


def test_invalid_record_is_reported(site):
    write_plugin(
        site,
        "bad_record",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_algorithms(register):
            register(Component(name="Bad Name", summary="", target="nocolon", problems=("vision",)))
    """,
    )
    error = plugin_named(plugins.discover(), "bad_record").error
    for fragment in ("'Bad Name'", "summary", "target", "backends", "problems"):
        assert fragment in error


def test_duplicate_component_names_between_third_parties_are_reported_on_both(site):
    algorithm_plugin(site, "first_dup", name="dup", distribution="metaplug-first")
    algorithm_plugin(site, "second_dup", name="dup", distribution="metaplug-second")
    found = plugins.discover()
    first, second = plugin_named(found, "first_dup"), plugin_named(found, "second_dup")
    assert "duplicates algorithm 'dup' (fakeb) from plugin 'second_dup'" in first.error
    assert "duplicates algorithm 'dup' (fakeb) from plugin 'first_dup'" in second.error
    assert first.components == second.components == {"algorithms": ["dup"]}
    with pytest.raises(PluginError) as excinfo:
        found.registry.get("algorithms", "dup", backend="fakeb")
    message = str(excinfo.value)
    assert "metaplug-first 1.0.0" in message and "metaplug-second 1.0.0" in message


def test_clash_with_a_first_party_component_is_reported_on_the_newcomer_only(site):
    write_plugin(
        site,
        "copycat",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_task_samplers(register):
            register(Component(name="sinusoid", summary="Mine.", target="m:C", problems=("regression",)))
            register(Component(name="original", summary="Also mine.", target="m:C", problems=("regression",)))
    """,
        distribution="metaplug-aaa-copycat",
    )
    found = plugins.discover()
    assert plugin_named(found, "metaplug").error is None
    copycat = plugin_named(found, "copycat")
    assert copycat.error == (
        "PluginError: task sampler 'sinusoid' from plugin 'copycat' (metaplug-aaa-copycat 1.0.0) duplicates "
        f"task sampler 'sinusoid' from plugin 'metaplug' (metaplug {metaplug.__version__}); "
        "the first-party one is used and this one is ignored: rename it"
    )
    assert copycat.components == {"task-samplers": ["original"]}  # only the clashing record is dropped
    assert found.registry.get("task-samplers", "sinusoid").plugin == "metaplug"
    assert found.registry.get("task-samplers", "original").plugin == "copycat"


def test_first_party_plugins_win_whatever_the_discovery_order(site):
    pytest.importorskip("metaplug_torch", reason="needs the first-party torch plugin installed")
    write_plugin(
        site,
        "early_adam",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_optimizers(register):
            register(Component(name="adam", summary="Mine.", target="m:C", backends=("torch",), role="outer"))
    """,
        distribution="metaplug-aaa",
    )  # sorts before metaplug-torch
    torch_was_imported = "torch" in sys.modules  # by an earlier test in this process
    found = plugins.discover()
    assert plugin_named(found, "torch").error is None
    assert "duplicates optimizer 'adam' (torch) from plugin 'torch'" in plugin_named(found, "early_adam").error
    assert found.registry.get("optimizers", "adam", backend="torch").plugin == "torch"
    assert ("torch" in sys.modules) == torch_was_imported  # discovery imported no framework


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
    assert found.registry.names("task-samplers") == sorted(["omniglot", "sinusoid", *STANDARD_BENCHMARKS, *OWN_DATA])


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
    write_plugin(
        site,
        "missing_target",
        """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_backends(register):
            register(Component(name="ghost", summary="No such module.", target="ghost_backend_module:Ghost"))
    """,
    )
    record = plugins.discover().registry.get("backends", "ghost")
    with pytest.raises(
        PluginError, match=r"cannot load backend 'ghost' from plugin 'missing_target'.*ModuleNotFoundError"
    ):
        record.load()

"""The discovery commands, run as a user runs them: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_assertions import assert_one_line_error
from plugin_factory import algorithm_plugin, write_plugin

import metaplug

STANDARD_BENCHMARKS = ["mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub"]
OWN_DATA = ["image-folder", "table", "table-classes"]


def run(*args: str, env_extra: dict[str, str] | None = None, python_args: tuple[str, ...] = ()):
    env = {**os.environ, **(env_extra or {})}
    env.pop("METAPLUG_DEBUG", None)
    return subprocess.run(
        [sys.executable, *python_args, "-m", "metaplug", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def fake_site(tmp_path):
    site = tmp_path / "site"
    algorithm_plugin(site, "cli_algo_plugin", name="cliprotonet", distribution="metaplug-cli-algo")
    write_plugin(site, "cli_broken", "raise RuntimeError('this plugin is broken')\n")
    paths = [str(site), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_version():
    result = run("--version")
    assert result.returncode == 0 and metaplug.__version__ in result.stdout


def test_plugins_json_reports_components_and_errors(fake_site):
    result = run("plugins", "--json", env_extra=fake_site)
    assert result.returncode == 0, result.stderr
    listing = {p["name"]: p for p in json.loads(result.stdout)}
    assert listing["cli_algo_plugin"]["components"] == {"algorithms": ["cliprotonet"]}
    assert listing["cli_algo_plugin"]["hooks"] == ["register_algorithms"]
    assert listing["cli_algo_plugin"]["version"] == "1.0.0"
    assert listing["cli_broken"]["error"] == "RuntimeError: this plugin is broken"
    assert listing["metaplug"]["components"]["task-samplers"] == [
        "sinusoid",
        "omniglot",
        *STANDARD_BENCHMARKS,
        *OWN_DATA,
    ]


def test_plugins_table_reports_broken_plugin_on_stderr(fake_site):
    result = run("plugins", env_extra=fake_site)
    assert result.returncode == 0
    assert "cli_algo_plugin" in result.stdout and "error" in result.stdout
    assert "error: plugin 'cli_broken'" in result.stderr and "Traceback" not in result.stderr


def test_list_algorithms_shows_backends(fake_site):
    result = run("list", "algorithms", "--json", env_extra=fake_site)
    entry = next(e for e in json.loads(result.stdout) if e["name"] == "cliprotonet")
    assert entry["backends"] == ["fakeb"] and entry["problems"] == ["regression"]
    table = run("list", "algorithms", env_extra=fake_site).stdout
    assert "cliprotonet" in table and "fakeb" in table


def test_info_shows_docstring_and_parameters(fake_site):
    result = run("info", "algorithm", "cliprotonet", "--json", env_extra=fake_site)
    data = json.loads(result.stdout)
    assert data["doc"] == "Implementation docstring."
    assert data["options"] == [
        {"name": "inner_lr", "type": "float", "default": 0.5, "help": "", "choices": [], "required": False}
    ]


def test_info_shows_declared_options_and_not_the_arguments_the_host_passes():
    result = run("info", "task-sampler", "omniglot", "--json")
    names = [o["name"] for o in json.loads(result.stdout)["options"]]
    assert names[:3] == ["ways", "shots", "queries"] and not {"split", "seed", "data_dir"} & set(names)
    text = run("info", "task-sampler", "sinusoid").stdout
    assert "shots: int = 10  # support points per task" in text
    assert "amplitude: tuple[float, float] = [0.1, 5.0]" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lst",), "no such command 'lst'. Did you mean 'list'?"),
        (("list", "algoritms"), "Did you mean 'algorithms'?"),
        (("info", "task-sampler", "sinusiod"), "unknown task sampler 'sinusiod'. Did you mean 'sinusoid'?"),
        (("info", "algorithm", "cliprotonet", "--backend", "jax"), "it supports: fakeb"),
        (("list", "--colour"), "No such option"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(fake_site, args, message):
    assert_one_line_error(run(*args, env_extra=fake_site), message)


def test_discovery_imports_no_framework():
    """With every installed plugin (torch and tensorflow ones included), discovery stays light."""
    result = run("plugins", python_args=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    heavy = {m for m in imported if m.split(".")[0] in {"torch", "tensorflow", "keras", "jax"}}
    assert not heavy, f"discovery imported {sorted(heavy)}"

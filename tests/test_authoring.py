"""``metaplug new-plugin``, ``install`` and ``uninstall`` in a throwaway environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from authoring_env import make_env, run

from metaplug.cli.authoring import split_extras
from metaplug.templates import BACKENDS, PluginNames, host_range, render

NO_ISOLATION = ("--", "--no-build-isolation", "--no-index")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(tmp_path_factory.mktemp("env") / "venv")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def installed_plugins(python: Path) -> str:
    result = run(python, "plugins")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_host_range_is_the_current_minor_series():
    assert host_range("0.1.0") == ">=0.1,<0.2"
    assert host_range("1.4.2") == ">=1.4,<1.5"


def test_new_plugin_writes_a_complete_package(tmp_path):
    result = run(Path(sys.executable), "new-plugin", "polyreg", "--kind", "task-sampler", "--dir", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"next: metaplug install -e '{tmp_path / 'p'}[test]' && cd {tmp_path / 'p'} && python -m pytest"
    )
    files = {str(p.relative_to(tmp_path / "p")) for p in (tmp_path / "p").rglob("*") if p.is_file()}
    assert {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "src/metaplug_polyreg/plugin.py",
        "tests/test_conformance.py",
    } <= files
    pyproject = (tmp_path / "p" / "pyproject.toml").read_text()
    assert '"metaplug>=0.1,<0.2"' in pyproject and 'polyreg = "metaplug_polyreg.plugin"' in pyproject
    assert 'test = ["pytest>=7.4"]' in pyproject
    assert "MIT License" in (tmp_path / "p" / "LICENSE").read_text()
    for path in (tmp_path / "p").rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(), f"unrendered placeholder in {path}"


def test_the_install_hint_matches_the_readmes(tmp_path):
    """new-plugin's closing hint, the generated README and the root README's "Writing a plugin"
    give the same commands: install editable with the test extra, then pytest in the folder."""
    result = run(Path(sys.executable), "new-plugin", "myalgo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hint = result.stdout.splitlines()[-1]
    assert hint == "next: metaplug install -e './metaplug-myalgo[test]' && cd metaplug-myalgo && python -m pytest"
    commands = hint.removeprefix("next: ").split(" && ")
    generated = (tmp_path / "metaplug-myalgo" / "README.md").read_text()
    root = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    writing = root[root.index("## Writing a plugin") :]
    for command in commands:
        assert command in writing, f"README.md's 'Writing a plugin' lacks {command!r}"
        assert command in generated, f"the generated README lacks {command!r}"


IMPLEMENTATIONS = {
    "algorithm": {"src/metaplug_shared/algorithm.py"},
    "optimizer": {"src/metaplug_shared/optimizer.py", "tests/test_metaplug_shared.py"},
    "backend": {"src/metaplug_shared/backend.py"},
    "model": {"src/metaplug_shared/model.py"},
}
"""Per kind, the generated files that differ between backends beyond the backend's name."""


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_one_template_per_kind_with_the_backend_as_a_parameter(tmp_path, kind):
    rendered = {}
    for backend in BACKENDS:
        project = tmp_path / backend
        rendered[backend] = {
            p.relative_to(project).as_posix(): p.read_text()
            for p in render(PluginNames.from_name("shared", kind, backend), project)
        }
    torch, tensorflow = rendered["torch"], rendered["tensorflow"]
    assert torch.keys() == tensorflow.keys()
    differing = {name for name in torch if torch[name] != tensorflow[name].replace("tensorflow", "torch")}
    assert differing == IMPLEMENTATIONS[kind]
    assert not any("tensorflow" in text for text in torch.values())
    assert not any("metaplug_torch" in text or "import torch" in text for text in tensorflow.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["Bad_Name"], "lower-case letters"),
        (["ok", "--dir", "{existing}"], "already exists and is not empty"),
    ],
)
def test_new_plugin_rejects_bad_input_in_one_line(tmp_path, args, message):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "file").write_text("x")
    result = run(Path(sys.executable), "new-plugin", *[a.format(existing=existing) for a in args])
    assert message in one_error_line(result)


TEMPLATES = [
    pytest.param("task-sampler", "torch", None, id="task-sampler"),
    pytest.param("observer", "torch", None, id="observer"),
    pytest.param("algorithm", "torch", "metaplug_torch", id="algorithm-torch"),
    pytest.param("algorithm", "tensorflow", "metaplug_tensorflow", id="algorithm-tensorflow", marks=pytest.mark.slow),
    pytest.param("optimizer", "torch", "metaplug_torch", id="optimizer-torch"),
    pytest.param("optimizer", "tensorflow", "metaplug_tensorflow", id="optimizer-tensorflow", marks=pytest.mark.slow),
    pytest.param("backend", "torch", "metaplug_torch", id="backend-torch"),
    pytest.param("backend", "tensorflow", "metaplug_tensorflow", id="backend-tensorflow", marks=pytest.mark.slow),
    pytest.param("model", "torch", "metaplug_torch", id="model-torch"),
    pytest.param("model", "tensorflow", "metaplug_tensorflow", id="model-tensorflow", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind, backend, needs", TEMPLATES)
def test_generated_plugin_installs_and_its_tests_pass_unchanged(tmp_path, kind, backend, needs):
    if needs:
        pytest.importorskip(needs, reason=f"the {kind} template builds on {needs}")
    names = PluginNames.from_name("generated", kind, backend)
    project = tmp_path / names.distribution
    render(names, project)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(project),
        ],
        check=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    for variable in ("METAPLUG_PLUGINS", "METAPLUG_DISABLE_PLUGINS"):
        env.pop(variable, None)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert re.search(r"\b\d+ passed", tests.stdout) and "failed" not in tests.stdout


def test_install_shows_components_and_uninstall_removes_the_plugin(env, tmp_path):
    project = tmp_path / "metaplug-polyreg"
    render(PluginNames.from_name("polyreg", "task-sampler"), project)
    result = run(env, "install", "-e", str(project), *NO_ISOLATION)
    assert result.returncode == 0, result.stderr
    assert "installed metaplug-polyreg 0.1.0" in result.stdout
    assert "task-sampler  polyreg" in result.stdout and "Polynomial regression" in result.stdout
    assert "metaplug-polyreg" in installed_plugins(env)

    listing = run(env, "list", "task-samplers")
    assert "polyreg" in listing.stdout

    result = run(env, "uninstall", "polyreg")  # the plugin name works as well as the distribution's
    assert result.returncode == 0, result.stderr
    assert "uninstalled metaplug-polyreg 0.1.0: plugin 'polyreg' (task-samplers: polyreg)" in result.stdout
    assert "metaplug-polyreg" not in installed_plugins(env)


def write_project(
    folder: Path, name: str, module: str, entry_point: bool, source: str = "", version: str = "1.0", extra: str = ""
) -> Path:
    (folder / module).mkdir(parents=True, exist_ok=True)
    (folder / module / "__init__.py").write_text(textwrap.dedent(source))
    entry = f'\n[project.entry-points.metaplug]\n{module} = "{module}"\n' if entry_point else ""
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"
        [project]
        name = "{name}"
        version = "{version}"
        """)
        + extra
        + entry
    )
    return folder


WORKING_PLUGIN = """
    from metaplug import Component, hookimpl

    @hookimpl
    def register_task_samplers(register):
        register(Component(name="{name}", summary="Works.", target="metaplug.tasks.sinusoid:Sinusoid",
                           problems=("regression",)))
"""


EDITABLE = '[tool.hatch.build]\ndev-mode-dirs = ["."]\n'  # a .pth editable install: no 'editables' needed


def installed_version(python: Path, name: str) -> str:
    return run(python, "-c", f"import importlib.metadata as m; print(m.version({name!r}))").stdout.strip()


def distribution_present(python: Path, name: str) -> bool:
    code = (
        f"import importlib.metadata as m\ntry: m.distribution({name!r}); print('yes')\n"
        "except m.PackageNotFoundError: print('no')"
    )
    return run(python, "-c", code).stdout.strip() == "yes"


def test_install_of_a_non_plugin_is_undone(env, tmp_path):
    project = write_project(tmp_path / "plain", "plain-package", "plain_package", entry_point=False)
    line = one_error_line(run(env, "install", str(project), *NO_ISOLATION))
    assert "plain-package is not a metaplug plugin" in line
    assert line.endswith("removed plain-package 1.0, the environment is as it was")
    assert not distribution_present(env, "plain-package")


def test_install_of_a_broken_plugin_is_undone(env, tmp_path):
    source = """
        from metaplug import Component, hookimpl

        @hookimpl
        def register_algorithms(register):
            register(Component(name="Bad Name", summary="x", target="a:b", backends=("torch",),
                               problems=("regression",)))
    """
    project = write_project(tmp_path / "broken", "metaplug-broken", "metaplug_broken", True, source)
    line = one_error_line(run(env, "install", str(project), *NO_ISOLATION))
    assert "plugin 'metaplug_broken' does not load" in line and "must be lower case" in line
    assert not distribution_present(env, "metaplug-broken")


def test_failed_pip_install_leaves_the_environment_unchanged(env, tmp_path):
    project = write_project(tmp_path / "needy", "metaplug-needy", "metaplug_needy", True)
    text = (
        (project / "pyproject.toml")
        .read_text()
        .replace('version = "1.0"', 'version = "1.0"\ndependencies = ["no-such-dist-xyz"]')
    )
    (project / "pyproject.toml").write_text(text)
    result = run(env, "install", str(project), *NO_ISOLATION)
    line = one_error_line(result)
    assert "pip could not install" in line and line.endswith("nothing was changed, the environment is as it was")
    assert not distribution_present(env, "metaplug-needy")


def build_wheel(project: Path, dest: Path) -> None:
    """A wheel of ``project`` in ``dest``, offline, with the environment's hatchling."""
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "-w", str(dest), str(project)], check=True)


def test_broken_upgrade_reinstalls_the_version_it_replaced(env, tmp_path):
    good = write_project(
        tmp_path / "good", "metaplug-upgrade", "metaplug_upgrade", True, WORKING_PLUGIN.format(name="upgraded")
    )
    build_wheel(good, tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert run(env, "install", str(wheel), *NO_ISOLATION).returncode == 0
    broken = write_project(
        tmp_path / "broken",
        "metaplug-upgrade",
        "metaplug_upgrade",
        True,
        "import no_such_dependency_xyz\n",
        version="2.0",
    )
    try:
        line = one_error_line(run(env, "install", str(broken), *NO_ISOLATION))
        assert "plugin 'metaplug_upgrade' does not load: ModuleNotFoundError" in line
        assert line.endswith("reinstalled metaplug-upgrade 1.0, the environment is as it was")
        assert installed_version(env, "metaplug-upgrade") == "1.0"
    finally:
        assert run(env, "uninstall", "metaplug-upgrade").returncode == 0


def test_broken_editable_upgrade_says_what_stays_installed(env, tmp_path):
    project = write_project(
        tmp_path / "editable",
        "metaplug-edited",
        "metaplug_edited",
        True,
        WORKING_PLUGIN.format(name="edited"),
        extra=EDITABLE,
    )
    assert run(env, "install", "-e", str(project), *NO_ISOLATION).returncode == 0
    write_project(
        project, "metaplug-edited", "metaplug_edited", True, "import no_such_dependency_xyz\n", "2.0", extra=EDITABLE
    )
    try:
        line = one_error_line(run(env, "install", "-e", str(project), *NO_ISOLATION))
        assert line.endswith(
            f"; metaplug-edited 2.0 is installed in place of 1.0, which was installed from the folder {project} "
            f"(editable) and cannot be fetched again; run 'metaplug install -e {project}' once that folder holds "
            "a working version, or 'metaplug uninstall metaplug-edited'"
        ), line
        assert installed_version(env, "metaplug-edited") == "2.0"
    finally:
        assert run(env, "uninstall", "metaplug-edited").returncode == 0


def test_install_accepts_extras_after_a_folder(env, tmp_path):
    extra = '[project.optional-dependencies]\ntest = ["click"]\n' + EDITABLE
    project = write_project(
        tmp_path / "with-extras",
        "metaplug-extras",
        "metaplug_extras",
        True,
        WORKING_PLUGIN.format(name="extras"),
        extra=extra,
    )
    result = run(env, "install", "-e", f"{project}[test]", *NO_ISOLATION)
    try:
        assert result.returncode == 0, result.stderr
        assert "installed metaplug-extras 1.0" in result.stdout
    finally:
        assert run(env, "uninstall", "metaplug-extras").returncode == 0


@pytest.mark.parametrize(
    "spec, split",
    [
        ("./pkg[test]", ("./pkg", "[test]")),
        ("./pkg[test, docs]", ("./pkg", "[test, docs]")),
        ("./pkg", ("./pkg", "")),
        ("metaplug-foo[test]==1.0", ("metaplug-foo[test]==1.0", "")),
    ],
)
def test_split_extras(spec, split):
    assert split_extras(spec) == split


@pytest.mark.parametrize(
    "args, message",
    [
        (["uninstall", "metaplug"], "refusing to uninstall metaplug itself"),
        (["uninstall", "numpy"], "numpy is not a metaplug plugin"),
        (["uninstall", "no-such-plugin"], "no installed plugin or distribution named 'no-such-plugin'"),
        (["install", "./no/such/folder"], "no such file or folder"),
        (["install", "-e", "metaplug-foo"], "-e installs a project folder"),
    ],
)
def test_bad_requests_fail_in_one_line_without_touching_pip(env, args, message):
    assert message in one_error_line(run(env, *args))


INNER = ["--set", "algorithm.inner_rule=inner-NAME"]
WORKFLOWS = [  # kind, backend, what 'metaplug train' is told to use the new components (NAME)
    pytest.param("algorithm", "torch", ["--algorithm", "NAME", "--backend", "torch"], id="algorithm-torch"),
    pytest.param(
        "task-sampler",
        "torch",
        ["--tasks", "NAME", "--algorithm", "fomaml", "--backend", "torch"],
        id="task-sampler",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "optimizer",
        "torch",
        ["--optimizer", "NAME", *INNER, "--backend", "torch"],
        id="optimizer-torch",
        marks=pytest.mark.slow,
    ),
    pytest.param("backend", "torch", ["--backend", "NAME"], id="backend-torch", marks=pytest.mark.slow),
    pytest.param("observer", "torch", ["--log", "NAME"], id="observer", marks=pytest.mark.slow),
    pytest.param(
        "algorithm",
        "tensorflow",
        ["--algorithm", "NAME", "--backend", "tensorflow"],
        id="algorithm-tensorflow",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        "optimizer",
        "tensorflow",
        ["--optimizer", "NAME", *INNER, "--backend", "tensorflow"],
        id="optimizer-tensorflow",
        marks=pytest.mark.slow,
    ),
    pytest.param("backend", "tensorflow", ["--backend", "NAME"], id="backend-tensorflow", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind, backend, uses", WORKFLOWS)
def test_author_workflow_new_plugin_edit_install_list_train_test(env, tmp_path, kind, backend, uses):
    """The guide's path (docs/plugin-authors.md): generate, edit, install with the test extra as
    new-plugin's hint says, see it, train with it, run its tests."""
    pytest.importorskip(f"metaplug_{backend}", reason=f"the {kind} template builds on metaplug-{backend}")
    name = f"my{kind.split('-')[-1]}"
    created = run(env, "new-plugin", name, "--kind", kind, "--backend", backend, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    project = tmp_path / f"metaplug-{name}"
    plugin = project / "src" / f"metaplug_{name}" / "plugin.py"
    plugin.write_text(plugin.read_text().replace("(template)", "(edited)"))

    installed = run(env, "install", "-e", f"./metaplug-{name}[test]", *NO_ISOLATION, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    try:
        listing = run(env, "list", f"{kind}s")
        assert re.search(rf"^{name}\s.*\(edited\)", listing.stdout, re.MULTILINE), listing.stdout

        trained = run(
            env,
            "train",
            *[u.replace("NAME", name) for u in uses],
            "--iterations",
            "3",
            "--meta-batch-size",
            "2",
            "--test-tasks",
            "2",
            "--val-every",
            "0",
            "--run-dir",
            str(tmp_path / "run"),
            "-q",
        )
        assert trained.returncode == 0, trained.stderr
        assert (tmp_path / "run" / "results.json").is_file()

        tests = run(env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not meta_training", cwd=project)
        assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    finally:
        assert run(env, "uninstall", f"metaplug-{name}").returncode == 0


def test_host_wheel_ships_every_template_file(tmp_path):
    import zipfile

    from metaplug import templates

    root = Path(templates.__file__).resolve().parents[2]
    build_wheel(root, tmp_path)
    (wheel,) = tmp_path.glob("metaplug-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(root).as_posix() for p in templates.HERE.rglob("*.tmpl")}
    assert sources and sources <= shipped, sorted(sources - shipped)

"""Threads follow the process's CPU limits, the machine's load, the work and the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaplug.contract.threads import ENV, cgroup_cpu_limit, choose_threads, parse_threads, usable_cpus
from metaplug.errors import ConfigError


def test_cgroup_v2_quota_and_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_usable_cpus_honour_affinity_quota_and_omp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert usable_cpus({}, tmp_path)[0] == 4
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    count, why = usable_cpus({}, tmp_path)
    assert count == 3 and "cgroup CPU quota 2.5" in why
    count, why = usable_cpus({"OMP_NUM_THREADS": "2"}, tmp_path)
    assert count == 2 and "OMP_NUM_THREADS" in why
    assert usable_cpus({"OMP_NUM_THREADS": "16"}, tmp_path)[0] == 3  # a cap, never more
    (tmp_path / "cpu.max").write_text("20000 100000\n")
    assert usable_cpus({}, tmp_path)[0] == 1  # a fifth of a CPU still gets one thread


def test_the_load_of_other_processes_takes_cores_away() -> None:
    four = (4, "4 (test)")
    assert choose_threads(env={}, load=0.2, cpus=four).threads == 4
    assert choose_threads(env={}, load=1.6, cpus=four).threads == 2
    assert choose_threads(env={}, load=3.4, cpus=four).threads == 1
    assert choose_threads(env={}, load=12.0, cpus=four).threads == 1
    assert "load average 12.0" in choose_threads(env={}, load=12.0, cpus=four).reason


def test_light_work_runs_on_one_thread_and_explicit_counts_win() -> None:
    four = (4, "4 (test)")
    assert choose_threads(light=True, env={}, load=0.0, cpus=four).threads == 1
    assert choose_threads(3, light=True, env={}, load=9.0, cpus=four).threads == 3
    chosen = choose_threads(light=True, env={ENV: "3"}, load=9.0, cpus=four)
    assert (chosen.threads, chosen.reason) == (3, ENV)
    assert choose_threads(env={ENV: "auto"}, load=0.0, cpus=four).threads == 4


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", True])
def test_bad_thread_counts_are_one_line_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match=f"{ENV} must be a positive integer or 'auto', got"):
        parse_threads(bad)


def test_torch_backend_sets_and_reports_its_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from metaplug.contract.interfaces import TaskSpec
    from metaplug_torch.algorithms.maml import MAML
    from metaplug_torch.backend import Backend

    saved = torch.get_num_threads()
    try:
        monkeypatch.delenv(ENV, raising=False)
        backend = Backend(device="cpu", threads=2)
        assert torch.get_num_threads() == 2 and backend.threads.reason == "requested"
        MAML(backend=backend, spec=TaskSpec("regression", (1,), 1, default_model="mlp"))
        assert torch.get_num_threads() == 2  # a requested count stays
        backend = Backend(device="cpu")
        MAML(backend=backend, spec=TaskSpec("regression", (1,), 1, default_model="mlp"))
        assert torch.get_num_threads() == 1 and backend.threads.threads == 1  # the MLP is light
        monkeypatch.setenv(ENV, "2")
        backend = Backend(device="cpu")
        MAML(backend=backend, spec=TaskSpec("regression", (1,), 1, default_model="mlp"))
        assert torch.get_num_threads() == 2 and backend.threads.reason == ENV
    finally:
        torch.set_num_threads(saved)


def test_tensorflow_light_models() -> None:
    pytest.importorskip("tensorflow")
    from metaplug.contract.interfaces import ModelSpec
    from metaplug_tensorflow.backend import is_light

    assert is_light(ModelSpec("mlp", (1,), 1))
    assert not is_light(ModelSpec("mlp", (1,), 1, {"hidden": (400, 400)}))
    assert not is_light(ModelSpec("conv4", (1, 28, 28), 5))


def test_tensorflow_backend_threads_in_a_fresh_process() -> None:
    """TensorFlow's threads can only be set before its runtime starts: check in a new process."""
    pytest.importorskip("tensorflow")
    script = (
        "from metaplug_tensorflow.backend import Backend, tf\n"
        "from metaplug.contract.interfaces import ModelSpec\n"
        "b = Backend(device='cpu', threads=2)\n"
        "b.build_model(ModelSpec('mlp', (1,), 1))\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(), b.threads.threads, b.threads.reason)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split()[:3] == ["2", "2", "requested"]

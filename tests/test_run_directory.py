"""One writer per run directory, with real processes: the lock, default directories, resume
while training, readers of a live run, runs that fail before their first checkpoint, Ctrl-C."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from doubles import DOUBLES

from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import config, rundir, runner
from metaplug.experiment.metrics import read_rows
from metaplug.experiment.runlock import RunInUseError, RunLock

SMALL = ["--backend", "numpy", "--algorithm", "linear-maml", "--meta-batch-size", "4", "--val-every", "5"]
SMALL += ["--val-tasks", "4", "--test-tasks", "10", "--log-every", "2", "--quiet"]
FOREVER = ["--iterations", "100000000"]


def environment() -> dict[str, str]:
    """The test-double plugin on the path; numpy's overflow warnings of diverging runs silenced."""
    paths = [str(DOUBLES), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONWARNINGS": "ignore::RuntimeWarning"}


def metaplug(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "metaplug", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=cwd, timeout=120)


def background(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "metaplug", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(), cwd=cwd
    )


def wait_for(condition, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)


def stop(child: subprocess.Popen) -> tuple[int, str]:
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    return child.returncode, stderr


def train_steps(run: Path) -> list[int]:
    return [row["step"] for row in read_rows(run / "metrics.jsonl") if row["split"] == "train"]


def test_a_second_writer_is_refused_with_the_holders_pid_and_nothing_is_damaged(tmp_path):
    run = tmp_path / "run"
    first = background("train", *SMALL, *FOREVER, "--checkpoint-every", "20", "--run-dir", str(run))
    wait_for(lambda: checkpoints.exists(run / "checkpoint"), first)
    config_before = (run / "config.toml").read_bytes()

    other = metaplug("train", *SMALL, "--seed", "2", "--iterations", "5", "--run-dir", str(run))
    assert_one_line_error(other, f"run directory {run} is in use by process {first.pid}", "metaplug train")
    resumed = metaplug("train", "--resume", str(run), "--iterations", "200000000")
    assert_one_line_error(resumed, f"is in use by process {first.pid}")
    assert (run / "config.toml").read_bytes() == config_before

    rows_seen = len(train_steps(run))
    wait_for(lambda: len(train_steps(run)) > rows_seen + 5, first)  # still appending to the same file
    status, stderr = stop(first)
    assert status == 130 and "Traceback" not in stderr
    steps = train_steps(run)
    assert steps == sorted(set(steps)) and len(steps) > rows_seen + 5  # no row lost, none duplicated
    saved = checkpoints.load(run / "checkpoint")
    assert saved.record["config"]["seed"] == 0 and config.load_file(run / "config.toml")["seed"] == 0


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from metaplug.experiment.runlock import RunLock; "
            f"lock = RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunInUseError, match=f"in use by process {holder.pid}"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = RunLock(tmp_path).acquire()  # the kernel released the dead process's lock
    assert lock.held
    with pytest.raises(RunInUseError, match=f"in use by process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    lock.release()
    RunLock(tmp_path).acquire().release()


def test_runs_started_together_get_their_own_default_directories(tmp_path):
    children = [background("train", *SMALL, "--iterations", "30", "--seed", str(s), cwd=tmp_path) for s in (1, 2, 3)]
    for child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3
    seeds = sorted(config.load_file(run / "config.toml")["seed"] for run in runs)
    assert seeds == [1, 2, 3]
    for run in runs:
        saved = checkpoints.load(run / "checkpoint")
        assert saved.record["config"]["seed"] == config.load_file(run / "config.toml")["seed"]
        assert train_steps(run) == list(range(2, 31, 2))
        assert json.loads((run / "results.json").read_text())["step"] == 30


def test_a_taken_default_name_gets_a_suffix(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 1, 21, 30, 5)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    cfg = config.from_dict({**config.defaults(), "backend": "numpy", "algorithm": {"name": "linear-maml"}})
    made = [rundir.create_default_run_dir(cfg, tmp_path / "runs") for _ in range(3)]
    base = "20261201-213005-linear-maml-sinusoid-numpy"
    assert [p.name for p in made] == [base, f"{base}-2", f"{base}-3"] and all(p.is_dir() for p in made)


def test_evaluate_and_checkpoint_readers_see_a_consistent_checkpoint_of_a_live_run(tmp_path):
    run = tmp_path / "run"
    child = background("train", *SMALL, *FOREVER, "--checkpoint-every", "1", "--run-dir", str(run))
    try:
        wait_for(lambda: checkpoints.exists(run / "checkpoint"), child)
        steps = [checkpoints.load(run / "checkpoint").step for _ in range(60)]  # the writer replaces it each step
        assert steps == sorted(steps) and steps[-1] > steps[0]
        done = metaplug("evaluate", str(run), "--episodes", "8", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["episodes"] == 8
    finally:
        status, stderr = stop(child)
    assert status == 130 and "Traceback" not in stderr


def test_a_reader_whose_checkpoint_is_replaced_meanwhile_reads_the_new_one(tmp_path, monkeypatch):
    """The race a live run's reader can lose: the pointer moves on, and its files are removed,
    between reading ``latest.json`` and reading the files it named."""
    folder = tmp_path / "checkpoint"
    checkpoints.save(folder, checkpoints.Checkpoint(1, {"w": np.zeros(2)}, {"samplers": {}}))
    real_read = checkpoints._read_verified
    writes = []

    def read_while_the_writer_moves_on(path, sha256):
        if not writes:
            writes.append(2)
            checkpoints.save(folder, checkpoints.Checkpoint(2, {"w": np.ones(2)}, {"samplers": {}}))
        return real_read(path, sha256)

    monkeypatch.setattr(checkpoints, "_read_verified", read_while_the_writer_moves_on)
    saved = checkpoints.load(folder)
    assert saved.step == 2 and np.array_equal(saved.arrays["w"], np.ones(2))


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_that_blocks_train(tmp_path):
    diverging = ["--set", "algorithm.inner_lr=1e300", "--iterations", "5"]
    failed = metaplug("train", *SMALL, *diverging, cwd=tmp_path)
    assert_one_line_error(failed, "diverged at step 1")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    run = tmp_path / "mine"
    assert_one_line_error(metaplug("train", *SMALL, *diverging, "--run-dir", str(run)), "diverged at step 1")
    assert not run.exists()
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert_one_line_error(metaplug("train", *SMALL, *diverging, "--run-dir", str(run)), "diverged at step 1")
    assert sorted(p.name for p in run.iterdir()) == [".lock", "notes.txt"]
    done = metaplug("train", *SMALL, "--iterations", "4", "--run-dir", str(run))
    assert done.returncode == 0, done.stderr


def test_a_run_killed_before_its_first_checkpoint_is_started_again_in_place(tmp_path):
    run = tmp_path / "run"
    child = background("train", *SMALL, *FOREVER, "--checkpoint-every", "0", "--run-dir", str(run))
    wait_for(lambda: (run / "metrics.jsonl").exists(), child)
    child.kill()
    child.communicate()
    assert not checkpoints.exists(run / "checkpoint") and (run / "config.toml").exists()
    done = metaplug("train", *SMALL, "--iterations", "6", "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    assert train_steps(run) == [2, 4, 6]


def test_a_config_file_the_user_put_in_run_dir_is_never_overwritten(tmp_path):
    (tmp_path / "config.toml").write_text("seed = 3\n")
    assert_one_line_error(metaplug("train", *SMALL, "--run-dir", str(tmp_path)), "holds a config.toml but no run")
    assert (tmp_path / "config.toml").read_text() == "seed = 3\n"
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("gap", [0.005, 0.02])
def test_a_second_ctrl_c_stops_at_once_quietly_with_the_checkpoint_intact(tmp_path, gap):
    run = tmp_path / "run"
    child = background("train", *SMALL, *FOREVER, "--checkpoint-every", "3", "--run-dir", str(run))
    wait_for(lambda: checkpoints.exists(run / "checkpoint"), child)
    child.send_signal(signal.SIGINT)
    time.sleep(gap)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    lines = stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and all(line.startswith("Error: interrupted") for line in lines), stderr
    step = checkpoints.load(run / "checkpoint").step
    done = metaplug("train", "--resume", str(run), "--iterations", str(step + 2))
    assert done.returncode == 0, done.stderr


def small_config() -> config.ExperimentConfig:
    raw = config.defaults()
    raw.update(backend="numpy", algorithm={"name": "linear-maml"})
    raw["train"].update(iterations=5, meta_batch_size=2, val_every=0, test_tasks=2)
    return config.from_dict(raw)


@pytest.mark.parametrize(
    "signum, stopped", [(signal.SIGTERM, runner.TrainingInterrupted), (signal.SIGINT, KeyboardInterrupt)]
)
def test_a_signal_during_start_up_leaves_no_directory(double, tmp_path, monkeypatch, signum, stopped):
    real_build = runner.build

    def build_then_signal(cfg, **options):
        experiment = real_build(cfg, **options)
        if signum == signal.SIGINT:  # delivered as Python's Ctrl-C, whatever a library left
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.kill(os.getpid(), signum)
        return experiment

    monkeypatch.setattr(runner, "build", build_then_signal)
    with pytest.raises(stopped):
        runner.start(small_config(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(runner, "build", real_build)
    runner.start(small_config(), tmp_path / "run", progress=False).run()
    assert checkpoints.load(tmp_path / "run" / "checkpoint").step == 5


def test_running_out_of_memory_at_the_first_step_leaves_no_directory(double, tmp_path, monkeypatch):
    import metaplug_double

    def out_of_memory(self, batch):
        raise MemoryError("Unable to allocate 745. GiB")

    monkeypatch.setattr(metaplug_double.LinearMAML, "meta_train_step", out_of_memory)
    trainer = runner.start(small_config(), tmp_path / "run", progress=False)
    with pytest.raises(MemoryError):
        trainer.run()
    assert not (tmp_path / "run").exists()


def test_a_file_system_without_locks_is_a_warning_and_other_lock_errors_are_one_line(tmp_path, monkeypatch):
    from metaplug.experiment import runlock
    from metaplug.experiment.files import RunFileError

    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock, "_try_lock", no_locks)
    with pytest.warns(UserWarning, match="cannot be locked on this file system .No locks available."):
        lock = RunLock(tmp_path).acquire()
    assert lock.held
    lock.release()

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(runlock, "_try_lock", failing)
    with pytest.raises(RunFileError, match="cannot lock run directory .*: Input/output error"):
        RunLock(tmp_path).acquire()

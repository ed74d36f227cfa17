"""The training loop with a numpy test-double plugin: resume equality, interrupts, checkpoint faults."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from doubles import DOUBLES

from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import config, files, runner
from metaplug.experiment.metrics import read_rows


def make_config(**train) -> config.ExperimentConfig:
    raw = config.defaults()
    raw["backend"] = "numpy"
    raw["algorithm"] = {"name": "linear-maml", "inner_lr": 0.1}
    raw["optimizer"]["lr"] = 0.01
    raw["train"].update(
        {
            "iterations": 40,
            "meta_batch_size": 5,
            "log_every": 3,
            "val_every": 10,
            "val_tasks": 7,
            "checkpoint_every": 0,
            "test_tasks": 20,
            **train,
        }
    )
    return config.from_dict(raw)


def final_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    saved = checkpoints.load(run_dir / "checkpoint")
    return saved.arrays


def rows_without_time(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed"} for row in read_rows(run_dir / "metrics.jsonl")]


def assert_same_run(a: Path, b: Path) -> None:
    arrays_a, arrays_b = final_arrays(a), final_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert np.array_equal(arrays_a[name], arrays_b[name]), name  # bit for bit
    assert rows_without_time(a) == rows_without_time(b)
    results_a, results_b = (json.loads((d / "results.json").read_text()) for d in (a, b))
    results_a.pop("elapsed_s"), results_b.pop("elapsed_s")
    assert results_a == results_b


def test_training_learns_and_writes_the_run_directory(double, tmp_path):
    result = runner.start(make_config(iterations=300, val_every=100), tmp_path / "run", progress=False).run()
    assert result.step == 300
    run = tmp_path / "run"
    saved = config.from_dict(__import__("tomllib").loads((run / "config.toml").read_text()))
    assert saved.model.name == "mlp" and saved.algorithm.options["inner_lr"] == 0.1
    rows = read_rows(run / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val_rows] == [100, 200, 300]
    assert train_rows[-1]["step"] == 300 and len(train_rows) == 100
    test = result.results["test"]
    assert test["loss"]["n"] == 20 and test["loss"]["mean"] < 0.8 * test["loss_before"]["mean"]
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "latest.json",
        "step-000300.json",
        "step-000300.npz",
    ]


def test_interrupt_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(double, tmp_path, monkeypatch):
    runner.start(make_config(), tmp_path / "straight", progress=False).run()

    import metaplug_double

    original = metaplug_double.LinearMAML.meta_train_step
    calls = []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 17:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, handled by the trainer after this step
        return original(self, batch)

    monkeypatch.setattr(metaplug_double.LinearMAML, "meta_train_step", interrupted)
    with pytest.raises(runner.TrainingInterrupted, match="interrupted at step 17"):
        runner.start(make_config(), tmp_path / "resumed", progress=False).run()
    assert checkpoints.load(tmp_path / "resumed" / "checkpoint").step == 17
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(metaplug_double.LinearMAML, "meta_train_step", original)
    trainer = runner.resume(tmp_path / "resumed", progress=False)
    assert trainer.step == 17
    trainer.run()
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_resume_with_more_iterations_continues_the_same_stream(double, tmp_path):
    runner.start(make_config(iterations=40, checkpoint_every=10), tmp_path / "straight", progress=False).run()
    runner.start(make_config(iterations=25, checkpoint_every=10), tmp_path / "extended", progress=False).run()
    with pytest.raises(config.ConfigError, match="already finished 25 of 25"):
        runner.resume(tmp_path / "extended")
    runner.resume(tmp_path / "extended", iterations=40, progress=False).run()
    arrays_a, arrays_b = final_arrays(tmp_path / "straight"), final_arrays(tmp_path / "extended")
    assert all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)


def signalling_at(monkeypatch, step: int, *signums: int) -> None:
    """Make the double's meta-training step number ``step`` raise ``signums`` at the process."""
    import metaplug_double

    original = metaplug_double.LinearMAML.meta_train_step
    calls = []

    def signalled(self, batch):
        calls.append(1)
        if len(calls) == step:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(metaplug_double.LinearMAML, "meta_train_step", signalled)


def test_repeated_sigterm_still_checkpoints_and_exits_143(double, tmp_path, monkeypatch):
    signalling_at(monkeypatch, 12, signal.SIGTERM, signal.SIGTERM)  # a scheduler signalling twice
    with pytest.raises(runner.TrainingInterrupted, match="terminated at step 12") as stopped:
        runner.start(make_config(), tmp_path / "run", progress=False).run()
    assert stopped.value.exit_code == 143
    assert checkpoints.load(tmp_path / "run" / "checkpoint").step == 12


def test_a_stop_signal_in_the_last_step_lets_the_run_finish(double, tmp_path, monkeypatch):
    signalling_at(monkeypatch, 40, signal.SIGTERM)
    result = runner.start(make_config(iterations=40), tmp_path / "run", progress=False).run()
    assert result.step == 40 and (tmp_path / "run" / "results.json").exists()


def test_resume_of_a_finished_run_leaves_its_config_and_points_to_evaluate(double, tmp_path):
    run = tmp_path / "run"
    runner.start(make_config(iterations=10), run, progress=False).run()
    before = (run / "config.toml").read_text()
    with pytest.raises(config.ConfigError, match="already finished 10 of 5") as refused:
        runner.resume(run, iterations=5)
    assert "metaplug evaluate" not in str(refused.value) and (run / "config.toml").read_text() == before
    (run / "results.json").unlink()  # killed while scoring the held-out tasks
    with pytest.raises(config.ConfigError, match=f"score it with 'metaplug evaluate {run}'"):
        runner.resume(run)


KILL_SCRIPT = """
import os, sys
sys.path.insert(0, {doubles!r})
from pathlib import Path
from metaplug.experiment import config, files, runner
write = files._write_file
def dying(path, data):
    if path.name.startswith({victim!r}) and (b"step-000020" in data or "000020" in path.name):
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
        os._exit(9)  # killed half way through writing
    write(path, data)
files._write_file = dying
raw = config.defaults()
raw["backend"] = "numpy"
raw["algorithm"] = {{"name": "linear-maml", "inner_lr": 0.1}}
raw["optimizer"]["lr"] = 0.01
raw["train"].update({train!r})
runner.start(config.from_dict(raw), Path({run!r}), progress=False).run()
"""


@pytest.mark.parametrize("victim", [".step-000020.npz", ".step-000020.json", ".latest.json"])
def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(double, tmp_path, victim):
    train = {
        "iterations": 40,
        "meta_batch_size": 5,
        "log_every": 3,
        "val_every": 10,
        "val_tasks": 7,
        "checkpoint_every": 10,
        "test_tasks": 20,
    }
    script = KILL_SCRIPT.format(doubles=str(DOUBLES), victim=victim, train=train, run=str(tmp_path / "killed"))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert checkpoints.load(tmp_path / "killed" / "checkpoint").step == 10
    runner.resume(tmp_path / "killed", progress=False).run()
    runner.start(make_config(checkpoint_every=10), tmp_path / "straight", progress=False).run()
    assert_same_run(tmp_path / "straight", tmp_path / "killed")
    leftovers = [p.name for p in (tmp_path / "killed" / "checkpoint").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_full_disk_is_one_clear_error_and_keeps_the_previous_checkpoint(double, tmp_path, monkeypatch):
    write = files._write_file

    def full(path, data):
        if path.name.startswith(".step-000020"):
            with open(path, "wb") as handle:
                handle.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(files, "_write_file", full)
    with pytest.raises(files.RunFileError, match="No space left on device"):
        runner.start(make_config(checkpoint_every=10), tmp_path / "run", progress=False).run()
    folder = tmp_path / "run" / "checkpoint"
    assert checkpoints.load(folder).step == 10
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "step-000010.json", "step-000010.npz"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "step-000010.npz").write_bytes(b"PK\x03\x04 not really a zip"), "corrupt"),
        (lambda d: (d / "step-000010.npz").unlink(), "unreadable"),
        (lambda d: (d / "step-000010.json").write_text("{}"), "corrupt"),
        (lambda d: (d / "latest.json").write_text("{ not json"), "corrupt"),
        (lambda d: [p.unlink() for p in d.iterdir()], "no checkpoint"),
    ],
)
def test_a_damaged_checkpoint_is_a_one_line_error(double, tmp_path, damage, message):
    runner.start(make_config(iterations=10), tmp_path / "run", progress=False).run()
    damage(tmp_path / "run" / "checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match=message) as caught:
        runner.resume(tmp_path / "run", iterations=20)
    assert "\n" not in str(caught.value)


def test_checkpoint_arrays_cannot_execute_code(tmp_path):
    folder = tmp_path / "checkpoint"
    checkpoints.save(folder, checkpoints.Checkpoint(1, {"model.w": np.array([object()], dtype=object)}, {}))
    with pytest.raises(checkpoints.CheckpointError, match="corrupt"):
        checkpoints.load(folder)  # object arrays need pickle, which loading refuses


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(double, tmp_path):
    runner.start(make_config(iterations=20, checkpoint_every=10), tmp_path / "run", progress=False).run()
    folder = tmp_path / "run" / "checkpoint"
    # Pretend the run died after step 20's rows but before its checkpoint: point back to step 10.
    runner.start(make_config(iterations=10, checkpoint_every=10), tmp_path / "ten", progress=False).run()
    for path in folder.iterdir():
        path.unlink()
    for path in (tmp_path / "ten" / "checkpoint").iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    with open(tmp_path / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 21, "split": "tr')  # a row cut short
    trainer = runner.resume(tmp_path / "run", progress=False)
    trainer.run()  # the jsonl observer drops the rows after step 10 when the run starts again
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "val"] == [10, 20]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 20

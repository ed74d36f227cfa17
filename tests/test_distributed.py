"""Data-parallel training: the host's slicing and gathering, and real worker processes on CPU
(gloo, MultiWorkerMirroredStrategy on localhost) giving one process's meta-parameters."""

from __future__ import annotations

import os
import signal
import subprocess

import distributed_worker
import numpy as np
import pytest
from cli_assertions import assert_one_line_error
from test_experiment_runner import make_config
from workers_env import finish, start_workers

from metaplug.contract.distributed import check_meta_batch, gather_tasks, refuse_dependent_tasks, shard, task_slice
from metaplug.errors import ConfigError
from metaplug.experiment import checkpoint as checkpoints
from metaplug.experiment import runner, workers


class FakeWorkers:
    """``world_size`` workers simulated in one process (the ``Workers`` protocol):
    ``all_gather`` returns the rows the test prepared for the other ranks."""

    name, restarted, reduce_seconds = "simulated", False, 0.0

    def __init__(self, rank: int, world_size: int, others: dict[int, np.ndarray]) -> None:
        self.rank, self.world_size, self.others = rank, world_size, others

    def average_gradients(self, algorithm) -> None:
        pass

    def all_gather(self, values: np.ndarray) -> np.ndarray:
        return np.stack([values if r == self.rank else self.others[r] for r in range(self.world_size)])

    def broadcast_text(self, text: str) -> str:
        return text

    def close(self) -> None:
        pass


@pytest.mark.parametrize("tasks, world", [(4, 2), (5, 2), (7, 3), (2, 4), (600, 7)])
def test_task_slices_cover_every_task_once_in_order(tasks: int, world: int) -> None:
    slices = [task_slice(tasks, r, world) for r in range(world)]
    covered = np.concatenate([np.arange(tasks)[s] for s in slices])
    assert covered.tolist() == list(range(tasks))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_shard_takes_the_same_tasks_from_every_array() -> None:
    batch = distributed_worker.batch(0, 5)
    part = shard(batch, 1, 2)
    assert part.num_tasks == 2
    np.testing.assert_array_equal(part.support_x, batch.support_x[3:])
    np.testing.assert_array_equal(part.query_y, batch.query_y[3:])
    assert part.classes is not None and batch.classes is not None
    np.testing.assert_array_equal(part.classes, batch.classes[3:])


def test_gather_tasks_restores_the_order_of_uneven_slices() -> None:
    values = np.arange(5.0) * 10
    rank1 = np.full(3, np.nan)
    rank1[:2] = values[3:]  # padded to the longest slice
    gathered = gather_tasks(FakeWorkers(0, 2, {1: rank1}), values[:3], 5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(gathered, values)


def test_a_meta_batch_that_does_not_split_evenly_is_refused() -> None:
    check_meta_batch(8, 4)
    with pytest.raises(ConfigError, match=r"meta_batch_size 6 cannot be split evenly over 4 workers; use a multiple"):
        check_meta_batch(6, 4)


def test_workers_stop_after_the_step_whose_gathered_metrics_carry_the_signal(double, tmp_path, monkeypatch):
    """A signal that comes after a step's metrics were gathered (the other workers cannot know
    of it) stops the run after the next step, whose gathering carries it to all."""
    original = workers.ShardedAlgorithm.meta_train_step
    calls = []

    def signalled_after_gathering(self, batch):
        metrics = original(self, batch)
        calls.append(1)
        if len(calls) == 12:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    monkeypatch.setattr(workers.ShardedAlgorithm, "meta_train_step", signalled_after_gathering)
    lead = runner.start(make_config(), tmp_path / "run", progress=False)
    with pytest.raises(runner.TrainingInterrupted, match="terminated at step 13"):
        workers.WorkerTrainer.adopt(lead, FakeWorkers(0, 1, {})).run()
    assert checkpoints.load(tmp_path / "run" / "checkpoint").step == 13


ALL = list(distributed_worker.ALGORITHMS)
TENSORFLOW = [name for name in ALL if name != "matchingnet"]


@pytest.mark.parametrize(
    "backend, names",
    [
        ("torch", ALL),
        ("tensorflow", ["maml", "protonet"]),  # TensorFlow's start-up and tracing: the rest in the slow run
        pytest.param("tensorflow", TENSORFLOW, marks=pytest.mark.slow, id="tensorflow-all"),
    ],
)
def test_two_workers_train_and_evaluate_as_one_process(backend: str, names: list[str], tmp_path) -> None:
    """Every algorithm, step after step: the meta-parameters of two workers equal one
    process's to float tolerance, and so do the gathered evaluation results."""
    pytest.importorskip("torch" if backend == "torch" else "tensorflow")
    out = tmp_path / "workers.npz"
    procs = start_workers(backend, [distributed_worker.__file__, backend, str(out), *names])
    for status, _, err in finish(procs):
        assert status == 0, err[-3000:]
    distributed = dict(np.load(out))
    single = distributed_worker.run(backend, names=names)
    assert sorted(distributed) == sorted(single)
    for key, expected in single.items():
        np.testing.assert_allclose(distributed[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    assert len(single["maml/eval/accuracy"]) == distributed_worker.EVAL_TASKS


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_reptile_with_task_to_task_state_is_refused_on_workers(backend: str) -> None:
    """Reptile's published inner Adam carries state from task to task: one line says why."""
    pytest.importorskip("torch" if backend == "torch" else "tensorflow")
    import metaplug

    spec = distributed_worker.spec()
    refuse_dependent_tasks(metaplug.algorithm("reptile", spec=spec, backend=backend, device="cpu"))
    learner = metaplug.algorithm("reptile", spec=spec, backend=backend, device="cpu", inner_optimizer="adam")
    with pytest.raises(ConfigError, match=r"^reptile with inner_optimizer 'adam' carries the inner Adam state"):
        refuse_dependent_tasks(learner)
    learner = metaplug.algorithm("reptile", spec=spec, backend=backend, device="cpu", inner_batch_size=2)
    with pytest.raises(ConfigError, match=r"^reptile with inner_batch_size or evaluation_batch_size draws"):
        refuse_dependent_tasks(learner)


def test_bad_worker_options_are_one_line_errors(tmp_path, monkeypatch, capsys) -> None:
    """Checked before any worker starts: nothing is launched (run in this process)."""
    from metaplug.cli import main
    from metaplug.experiment import scaling

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scaling, "CLUSTER_FLAGS", [])
    monkeypatch.setenv("TF_CONFIG", "")  # recorded, so the TF_CONFIG that --workers sets is removed afterwards

    def train(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.delenv("TF_CONFIG", raising=False)
        with pytest.raises(SystemExit) as stopped:
            main(["train", "--backend", "torch", "--iterations", "2", *args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, int(stopped.value.code or 0), captured.out, captured.err)

    assert_one_line_error(train("--nproc", "0"), "distributed.workers", "at least 1")
    assert_one_line_error(train("--nproc", "2", "--meta-batch-size", "5"), "5 cannot be split evenly over 2 workers")
    assert_one_line_error(train("--worker-index", "0"), "--workers and --worker-index go together")
    assert_one_line_error(train("--workers", "hostA", "--worker-index", "0"), "host:port", "'hostA'")
    assert_one_line_error(train("--workers", "a:1,b:2", "--worker-index", "2"), "--worker-index must be 0 to 1")
    assert_one_line_error(
        train("--workers", "localhost:1,localhost:2", "--worker-index", "0"), "which backend 'torch' does not use"
    )
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    assert "TF_CONFIG" not in os.environ

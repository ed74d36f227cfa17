"""``metaplug bench``'s compute floor, GPU memory, competing processes and option overrides."""

from __future__ import annotations

import pytest

from metaplug.errors import ConfigError
from metaplug.experiment.bench import busy_processes, compute_floor, measure, nominal_gflop, peak_gpu_mb, workload


class FakeBackend:
    def __init__(self, rate: float, gpu: float | None) -> None:
        self.rate, self.gpu = rate, gpu

    def dense_gflop_per_s(self) -> float:
        return self.rate

    def peak_gpu_mb(self) -> float | None:
        return self.gpu


def test_the_floor_is_the_nominal_work_at_the_measured_dense_rate() -> None:
    conv4 = workload("omniglot-maml")
    floor = compute_floor(conv4, FakeBackend(200.0, None))
    assert floor == {"dense_gflop_per_s": 200.0, "floor_ms": round(1000 * nominal_gflop(conv4) / 200.0, 1)}
    assert 700 < floor["floor_ms"] < 800  # 150.8 GFLOP at 200 GFLOP/s
    assert compute_floor(workload("sinusoid-maml"), FakeBackend(200.0, None)) == {}  # no nominal count
    assert compute_floor(conv4, object()) == {}  # a backend that cannot measure its rate


def test_gpu_memory_comes_from_the_backend() -> None:
    assert peak_gpu_mb(FakeBackend(1.0, 1234.5678)) == 1234.6
    assert peak_gpu_mb(FakeBackend(1.0, None)) is None
    assert peak_gpu_mb(object()) is None


def test_busy_processes_run_while_measuring_and_end_after() -> None:
    with busy_processes(2) as started:
        assert len(started) == 2 and all(p.poll() is None for p in started)
    assert all(p.poll() is not None for p in started)


def test_overrides_set_algorithm_options_and_unknown_ones_are_named() -> None:
    pytest.importorskip("torch")
    row = measure("torch", "sinusoid-maml", steps=1, warmup=0, overrides={"inner_steps": 2})
    assert row["options"] == {"inner_steps": 2} and row["threads"] >= 1 and row["threads_reason"]
    assert row["peak_gpu_mb"] is None or row["device"].startswith("cuda")
    with pytest.raises(ConfigError, match="has no option 'inner_stepz'. Did you mean 'inner_steps'"):
        measure("torch", "sinusoid-maml", steps=1, warmup=0, overrides={"inner_stepz": 2})


@pytest.mark.parametrize("name", ["torch", "tensorflow"])
def test_backends_measure_their_dense_rate(name: str) -> None:
    """Both measure the better of a matrix product and a convolution."""
    if name == "torch":
        pytest.importorskip("torch")
        from metaplug_torch.backend import Backend
    else:
        pytest.importorskip("tensorflow")
        from metaplug_tensorflow.backend import Backend  # type: ignore[assignment]

    assert Backend(device="cpu", threads=1).dense_gflop_per_s(repeats=1) > 0


def test_busy_processes_end_with_their_parent() -> None:
    """A busy process whose parent is killed (no ``finally``) stops by itself."""
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from metaplug.experiment.bench import busy_processes\n"
        "with busy_processes(1) as started:\n"
        "    print(started[0].pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(600):  # up to 60 s on a loaded machine; normally at once
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"busy process {child} still runs after its parent was killed")

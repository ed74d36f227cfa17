"""Makes ``torch_helpers`` importable (pytest runs with ``--import-mode=importlib``) and runs
this plugin's tests on one intra-op thread.

The tests use small tensors, for which a second thread gains little, while on a shared
machine every parallel region waits for a descheduled partner thread: measured here with
other jobs running, four tiny conv4 meta-steps took 12 s of CPU time on two threads and
0.04 s on one.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

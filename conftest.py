"""Test-wide settings: where the shared Omniglot data and the decoded cache live.

``METAPLUG_DATA_DIR`` defaults to ``../shared/data`` beside the repository (the
real Omniglot archives), ``METAPLUG_CACHE_DIR`` to ``.cache/`` in the repository;
``METAPLUG_CALIBRATE=0``: nothing is timed to choose the batching.
"""

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
_shared = ROOT.parent / "shared" / "data"
if "METAPLUG_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["METAPLUG_DATA_DIR"] = str(_shared)
os.environ.setdefault("METAPLUG_CACHE_DIR", str(ROOT / ".cache" / "metaplug"))
# ``batching = "auto"`` takes the backends' rule: no test times steps unless it tests that
# (tests/test_calibration*.py, on a fake clock)
os.environ["METAPLUG_CALIBRATE"] = "0"


_HANDLERS = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
"""Ctrl-C's and SIGTERM's handlers as the test run started; Python's own Ctrl-C handler when
it started with Ctrl-C ignored (as a shell starts a background job: ``pytest &``), since the
tests of Ctrl-C need it delivered."""
if _HANDLERS[signal.SIGINT] is signal.SIG_IGN:
    _HANDLERS[signal.SIGINT] = signal.default_int_handler


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """Each test starts with the run's Ctrl-C and SIGTERM handlers, installed again: a command
    run in this process may leave Ctrl-C ignored on purpose (it does while it exits), and a
    framework's native code may change the process's disposition behind Python's back; the
    processes a test starts inherit whatever is installed, and the signal mask too."""
    for signum, handler in _HANDLERS.items():
        if handler is not None:
            signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLERS)  # and neither of them blocked
    yield

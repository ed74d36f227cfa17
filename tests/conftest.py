"""Fixtures shared by the host's tests."""

import pytest
from doubles import DOUBLES

from metaplug.plugins import discovery as plugins


@pytest.fixture
def double(monkeypatch):
    """Discovery sees the numpy test-double plugin (``backend numpy``, ``linear-maml``)."""
    monkeypatch.syspath_prepend(str(DOUBLES))
    plugins.reset()
    yield
    plugins.reset()

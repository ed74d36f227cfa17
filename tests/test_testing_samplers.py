"""The host's own task samplers pass the task-sampler conformance suite."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from metaplug.tasks.datasets import data_dir
from metaplug.testing import TaskSamplerConformance


class TestSinusoidConformance(TaskSamplerConformance):
    sampler = "sinusoid"
    options: ClassVar[dict[str, Any]] = {"shots": 5, "queries": 7}


@pytest.mark.skipif(not (data_dir("omniglot") / "images_background.zip").is_file(), reason="Omniglot not available")
class TestOmniglotConformance(TaskSamplerConformance):
    sampler = "omniglot"
    options: ClassVar[dict[str, Any]] = {"ways": 5, "shots": 2, "queries": 3, "rotations": True}

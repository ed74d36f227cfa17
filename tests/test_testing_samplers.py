"""The host's own task samplers pass the task-sampler conformance suite."""

from __future__ import annotations

import pytest

from metaplug.tasks.datasets import data_dir
from metaplug.testing import TaskSamplerConformance


class TestSinusoidConformance(TaskSamplerConformance):
    sampler = "sinusoid"
    options = {"shots": 5, "queries": 7}


@pytest.mark.skipif(not (data_dir("omniglot") / "images_background.zip").is_file(), reason="Omniglot not available")
class TestOmniglotConformance(TaskSamplerConformance):
    sampler = "omniglot"
    options = {"ways": 5, "shots": 2, "queries": 3, "rotations": True}

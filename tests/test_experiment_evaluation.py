"""Confidence intervals, batched evaluation, the progress bar and the metrics file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metaplug.experiment.evaluation import evaluate_episodes, headline, mean_ci, summarize
from metaplug.experiment.metrics import MetricsLog, RunningMeans, read_rows
from metaplug.tasks import SinusoidSampler


def test_mean_ci_is_1_96_sample_std_over_sqrt_n():
    values = [0.2, 0.4, 0.9, 0.5]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    stats = mean_ci(np.array(values))
    assert stats["mean"] == pytest.approx(mean) and stats["std"] == pytest.approx(std)
    assert stats["ci95"] == pytest.approx(1.96 * std / 2) and stats["n"] == 4
    assert mean_ci(np.array([1.0]))["ci95"] is None and mean_ci(np.array([]))["n"] == 0
    assert mean_ci(np.array([np.nan, np.nan])) == {"mean": None, "ci95": None, "std": None, "n": 2}
    undefined_before = summarize({"accuracy": np.array([0.5, 1.0]), "loss_before": np.full(2, np.nan)})
    assert "before" not in headline(undefined_before, "classification")


class CountingAlgorithm:
    """Scores each task by its first support target, so chunking can be checked exactly."""

    def __init__(self):
        self.chunks = []

    def evaluate(self, batch, steps=None):
        self.chunks.append((batch.num_tasks, steps))
        return {"loss": batch.support_y[:, 0, 0].astype(np.float64), "loss_before": np.ones(batch.num_tasks)}


def test_evaluate_episodes_draws_in_chunks_and_concatenates():
    algorithm = CountingAlgorithm()
    per_task = evaluate_episodes(algorithm, SinusoidSampler("test", 4), episodes=23, chunk=10, steps=3)
    assert algorithm.chunks == [(10, 3), (10, 3), (3, 3)]
    reference = SinusoidSampler("test", 4)
    expected = np.concatenate([reference.sample(n).support_y[:, 0, 0] for n in (10, 10, 3)])
    assert np.array_equal(per_task["loss"], expected.astype(np.float64))
    summary = summarize(per_task)
    assert summary["loss_before"]["ci95"] == 0.0
    assert headline(summary, "regression").startswith("MSE after adaptation")
    assert "accuracy 75.00% ± " in headline(summarize({"accuracy": np.array([0.5, 1.0])}), "classification")


def test_metrics_log_keeps_rows_and_skips_a_torn_last_line(tmp_path):
    log = MetricsLog(tmp_path)
    log.append({"step": 1, "loss": 2.0})
    log.append({"step": 2, "loss": float("nan")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')
    assert read_rows(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}]
    log.truncate(1)
    assert read_rows(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]
    means = RunningMeans()
    means.add({"loss": 1.0})
    means.add({"loss": 2.0})
    assert means.means() == {"loss": 1.5} and RunningMeans(**means.state()).means() == {"loss": 1.5}

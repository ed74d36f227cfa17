"""One task's loss and accuracy (no task axis: the per-task API; scalars)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(problem: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy (classification) or mean squared error (regression), averaged."""
    if problem == "classification":
        return F.cross_entropy(outputs, targets)
    return F.mse_loss(outputs, targets)


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest score is the target class."""
    return (outputs.argmax(-1) == targets).to(outputs.dtype).mean()

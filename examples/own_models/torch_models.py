"""The seed article's PyTorch models, completed so they run with metaplug.

``MetaLearner`` is meta-trained (MAML); ``TaskLearner`` is the transfer-learning
baseline's model (``finetune``). Both name their last layer ``head`` and everything
before it ``features``: that is all metaplug needs to adapt only the head (ANIL) or
replace it (fine-tuning).
"""

from __future__ import annotations

from torch import nn

from metaplug.contract.interfaces import TaskSpec


class MetaLearner(nn.Module):
    """A two-hidden-layer MLP on 10-dimensional inputs."""

    def __init__(self, input_size: int = 10, hidden: int = 40, output_size: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(input_size, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, output_size)

    def forward(self, x):
        return self.head(self.features(x))


class TaskLearner(nn.Module):
    """A one-hidden-layer MLP on 10-dimensional inputs."""

    def __init__(self, input_size: int = 10, hidden: int = 40, output_size: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(input_size, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, output_size)

    def forward(self, x):
        return self.head(self.features(x))


def meta_learner(spec: TaskSpec, hidden: int = 40) -> MetaLearner:
    """A factory for ``metaplug train --model own_models.torch_models:meta_learner``."""
    return MetaLearner(spec.input_shape[0], hidden, spec.output_size)


def task_learner(spec: TaskSpec, hidden: int = 40) -> TaskLearner:
    """A factory for ``metaplug train --model own_models.torch_models:task_learner``."""
    return TaskLearner(spec.input_shape[0], hidden, spec.output_size)

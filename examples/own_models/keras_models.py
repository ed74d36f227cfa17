"""The seed article's Keras models, completed so they run with metaplug.

The same networks as ``torch_models``: ``MetaLearner`` is meta-trained (MAML);
``TaskLearner`` is the transfer-learning baseline's model (``finetune``). metaplug calls
them statelessly with explicit weights, so the gradient flows through the inner loop.
"""

from __future__ import annotations

import keras

from metaplug.contract.interfaces import TaskSpec


class MetaLearner(keras.Model):
    """A two-hidden-layer MLP (the input size comes from the first batch)."""

    def __init__(self, hidden: int = 40, output_size: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.features = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden, activation="relu")]
        )
        self.head = keras.layers.Dense(output_size)

    def call(self, x):
        return self.head(self.features(x))


class TaskLearner(keras.Model):
    """A one-hidden-layer MLP."""

    def __init__(self, hidden: int = 40, output_size: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.features = keras.Sequential([keras.layers.Dense(hidden, activation="relu")])
        self.head = keras.layers.Dense(output_size)

    def call(self, x):
        return self.head(self.features(x))


def meta_learner(spec: TaskSpec, hidden: int = 40) -> MetaLearner:
    """A factory for ``metaplug train --backend tensorflow --model own_models.keras_models:meta_learner``."""
    return MetaLearner(hidden, spec.output_size)


def task_learner(spec: TaskSpec, hidden: int = 40) -> TaskLearner:
    """A factory for ``metaplug train --backend tensorflow --model own_models.keras_models:task_learner``."""
    return TaskLearner(hidden, spec.output_size)

"""metaplug-tensorboard: the run observer 'tensorboard' for metaplug.

The hook is in :mod:`metaplug_tensorboard.plugin` (the entry point); the observer, which
imports tensorboardX, in :mod:`metaplug_tensorboard.observer`.
"""

__version__ = "0.1.0"

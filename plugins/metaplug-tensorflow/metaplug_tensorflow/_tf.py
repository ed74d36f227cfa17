"""The one place that imports TensorFlow (quietly: C++ info logs off unless the user set them)."""

import os

from metaplug.errors import PluginError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow as tf
except ImportError as exc:
    raise PluginError(
        "metaplug-tensorflow needs TensorFlow >= 2.16: pip install 'metaplug-tensorflow[cpu]' "
        f"(tensorflow-cpu) or 'metaplug-tensorflow[gpu]' (tensorflow); import failed: {exc}"
    ) from None

__all__ = ["tf"]

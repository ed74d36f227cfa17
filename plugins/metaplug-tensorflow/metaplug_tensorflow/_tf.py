"""The one place that imports TensorFlow (quietly: C++ info logs off unless the user set them)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

__all__ = ["tf"]

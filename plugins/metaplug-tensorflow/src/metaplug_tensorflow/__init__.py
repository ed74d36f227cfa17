"""metaplug-tensorflow: the TensorFlow backend, algorithms and optimizers for metaplug.

Importing this package does not import TensorFlow; the modules that need it
(:mod:`metaplug_tensorflow.backend`, :mod:`metaplug_tensorflow.algorithms`, ...)
import it when a component is used.
"""

__version__ = "0.1.0"

"""metaplug-torch: the PyTorch backend, algorithms and optimizers for metaplug.

Importing this package imports no torch; the implementation modules do, when a
component is first used (see :mod:`metaplug_torch.plugin`).
"""

__version__ = "0.1.0"

"""metaplug-matchingnet: the algorithm 'matchingnet' for metaplug.

The hooks are in :mod:`metaplug_matchingnet.plugin` (the entry point); keep this package's
``__init__`` free of framework imports, since discovery imports it.
"""

__version__ = "0.1.0"

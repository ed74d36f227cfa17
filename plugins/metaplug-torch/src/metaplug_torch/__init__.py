"""metaplug-torch: the PyTorch backend, algorithms and optimizers for metaplug.

Importing this package imports no torch; the implementation modules do, when a
component is first used (see :mod:`metaplug_torch.plugin`). It sets ``OMP_WAIT_POLICY``
to ``PASSIVE`` unless it is set or torch is already imported.
"""

import os
import sys

if "torch" not in sys.modules:
    # Idle OpenMP threads sleep instead of spinning: with other processes on the cores,
    # spinning threads made small steps 3x (and conv4 steps 10x) slower (docs/benchmarks.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

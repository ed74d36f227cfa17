"""Test-wide settings: where the shared Omniglot data and the decoded cache live.

``METAPLUG_DATA_DIR`` defaults to ``../shared/data`` beside the repository (the
real Omniglot archives), ``METAPLUG_CACHE_DIR`` to ``.cache/`` in the repository;
``METAPLUG_CALIBRATE=0``: nothing is timed to choose the batching.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_shared = ROOT.parent / "shared" / "data"
if "METAPLUG_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["METAPLUG_DATA_DIR"] = str(_shared)
os.environ.setdefault("METAPLUG_CACHE_DIR", str(ROOT / ".cache" / "metaplug"))
# ``batching = "auto"`` takes the backends' rule: no test times steps unless it tests that
# (tests/test_calibration*.py, on a fake clock)
os.environ["METAPLUG_CALIBRATE"] = "0"

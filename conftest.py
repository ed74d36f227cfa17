"""Test-wide settings: where the shared Omniglot data and the decoded cache live.

``METAPLUG_DATA_DIR`` defaults to ``../shared/data`` beside the repository (the
real Omniglot archives), ``METAPLUG_CACHE_DIR`` to ``.cache/`` in the repository.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_shared = ROOT.parent / "shared" / "data"
if "METAPLUG_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["METAPLUG_DATA_DIR"] = str(_shared)
os.environ.setdefault("METAPLUG_CACHE_DIR", str(ROOT / ".cache" / "metaplug"))

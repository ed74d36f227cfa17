"""Where the numpy test-double plugin lives (backend ``numpy``, algorithm ``linear-maml``).

Tests put :data:`DOUBLES` on ``sys.path`` (the ``double`` fixture) or on a subprocess's
``PYTHONPATH`` so that discovery sees it; other tests never do.
"""

from pathlib import Path

DOUBLES = Path(__file__).parent / "experiment_doubles"

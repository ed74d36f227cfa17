"""Importing the conformance suite imports no deep-learning framework."""

import subprocess
import sys


def test_conformance_suite_imports_no_framework():
    code = (
        "import sys, metaplug.testing as t\n"
        "for name in t.__all__: getattr(t, name)\n"
        "import metaplug.testing.optimizers, metaplug.testing.backends\n"
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

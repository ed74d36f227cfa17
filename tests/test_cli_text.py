"""``metaplug info`` prints docstrings as plain text, without reStructuredText markup."""

import subprocess
import sys

import pytest

from metaplug.cli.text import plain_text


def test_roles_literals_and_links_become_plain_words():
    doc = "Uses :class:`~metaplug.Options`, :meth:`a.b.step`, ``inner_steps`` and `Finn et al. <https://x.y>`_."
    assert plain_text(doc) == "Uses Options, a.b.step, inner_steps and Finn et al.."


def test_info_shows_no_markup():
    pytest.importorskip("metaplug_torch")
    done = subprocess.run(
        [sys.executable, "-m", "metaplug", "info", "algorithm", "maml", "--backend", "torch"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "inner_steps" in done.stdout
    for markup in ("``", ":class:", ":meth:", ":func:"):
        assert markup not in done.stdout

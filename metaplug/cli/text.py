"""Docstrings as plain text for the terminal: reStructuredText markup removed."""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(doc: str) -> str:
    """``doc`` without reStructuredText roles, links and literal markup: ``:class:`~a.B```
    becomes ``B``, ````x```` becomes ``x``, ```text <url>`_`` becomes ``text``."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1).strip()
        return target.rsplit(".", 1)[-1] if match.group(0).count("~") else target

    doc = _ROLE.sub(role, doc)
    doc = _LINK.sub(r"\1", doc)
    return _LITERAL.sub(r"\1", doc)

"""docs/hooks.md documents every hook of metaplug/contract/hookspecs.py with its exact signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from metaplug import PROJECT_NAME
from metaplug.contract import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
HEADING = re.compile(r"^## `(\w+)\((.*)\)`$", re.MULTILINE)
VERSION_ADDED = re.compile(r"\.\. versionadded:: (\S+)")


def specs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(function)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, f"{PROJECT_NAME}_spec")
    }


def sections() -> dict[str, tuple[str, str]]:
    """``{hook: (argument list, section text)}`` from the headings of docs/hooks.md."""
    text = DOCS.read_text()
    found = list(HEADING.finditer(text))
    ends = [m.start() for m in found[1:]] + [len(text)]
    return {m.group(1): (m.group(2), text[m.end() : end]) for m, end in zip(found, ends, strict=True)}


def test_the_hookspecs_module_has_hooks():
    assert {"register_algorithms", "register_backends", "register_commands"} <= set(specs())


@pytest.mark.parametrize("hook", sorted(specs()))
def test_hook_is_documented_with_its_signature(hook):
    documented = sections()
    assert hook in documented, f"docs/hooks.md has no '## `{hook}(...)`' section"
    arguments, body = documented[hook]
    expected = ", ".join(specs()[hook].parameters)
    assert arguments == expected, f"docs/hooks.md shows {hook}({arguments}); the spec is {hook}({expected})"
    for argument in specs()[hook].parameters:
        assert re.search(rf"^- `{argument}`: \S", body, re.MULTILINE), (
            f"argument {argument!r} of {hook} is not described in docs/hooks.md"
        )


@pytest.mark.parametrize("hook", sorted(specs()))
def test_hook_version_added_is_declared_and_documented(hook):
    spec_doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    match = VERSION_ADDED.search(spec_doc)
    assert match, f"the docstring of {hook} in metaplug/contract/hookspecs.py lacks '.. versionadded::'"
    _, body = sections()[hook]
    assert f"*Added in {match.group(1)}.*" in body, f"docs/hooks.md does not say {hook} was added in {match.group(1)}"


def test_docs_describe_no_unknown_hooks():
    unknown = set(sections()) - set(specs())
    assert not unknown, f"docs/hooks.md documents hooks that metaplug/contract/hookspecs.py lacks: {sorted(unknown)}"

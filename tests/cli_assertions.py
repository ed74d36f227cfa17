"""What every bad-input test checks: a non-zero exit and exactly one ``Error:`` line."""

import subprocess


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, no traceback, one ``Error: ...`` line on stderr containing every fragment."""
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

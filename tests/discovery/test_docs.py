"""The Python example of docs/discovery.md runs as written and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "discovery.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_library_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = EXAMPLES
    exec(compile(code, str(DOC), "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "['10.0.0.5:8080']",
        "[('10.0.0.5:8080', 1), ('10.0.0.6:8080', 3)]",
        "[('api-service', 1, 0), ('api-service', 2, 1)]",
    ]

"""docs/seed-guide.md runs as written: every block, in order, against a real service
(Hypercorn in a process of its own) where the page says 127.0.0.1:8081."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.upstream_processes import PythonUpstream, hypercorn

GUIDE = Path(__file__).parents[2] / "docs" / "seed-guide.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
SERVICE = "127.0.0.1:8081"


@pytest.fixture(scope="module")
def service() -> Iterator[PythonUpstream]:
    upstream = hypercorn(1000)
    yield upstream
    upstream.stop()


def test_the_guide_ports_every_section_of_the_seed() -> None:
    sections = re.findall(r"^## (\d+)\. ", GUIDE.read_text(), re.M)
    assert sections == [str(n) for n in range(1, 12)]
    assert len(BLOCKS) == 11


@pytest.mark.parametrize("code", BLOCKS, ids=[f"section-{n}" for n in range(1, len(BLOCKS) + 1)])
def test_the_block_runs(code: str, service: PythonUpstream, capsys) -> None:
    exec(
        compile(code.replace(SERVICE, service.address), str(GUIDE), "exec"),
        {"__name__": "__guide__"},
    )
    assert capsys.readouterr().out  # each block shows what it did

"""The file backend reads JSON lists and TOML tables alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from meshnode.discovery.file import FileSource
from meshnode.discovery.source import DiscoveryError
from meshnode.policy.models import Endpoint, FileDiscovery
from meshnode.policy.units import Address


async def first_answer(path: Path) -> list[Endpoint]:
    found: list[Endpoint] = []
    with trio.CancelScope() as scope:

        def record(endpoints: Sequence[Endpoint]) -> None:
            found.extend(endpoints)
            scope.cancel()

        await FileSource(FileDiscovery(str(path))).watch(record)
    return found


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("api.json", '["10.0.0.1:80", {"address": "10.0.0.2:80", "weight": 2}]'),
        ("api.toml", 'endpoints = ["10.0.0.1:80", { address = "10.0.0.2:80", weight = 2 }]'),
    ],
)
async def test_json_and_toml(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    assert await first_answer(tmp_path / name) == [
        Endpoint(Address("10.0.0.1", 80)),
        Endpoint(Address("10.0.0.2", 80), weight=2),
    ]


async def test_all_entries_malformed_is_garbage_not_an_empty_set(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text('["nowhere", {"address": "10.0.0.1:0"}]')
    with pytest.raises(DiscoveryError, match="all 2 entries are malformed"):
        await first_answer(tmp_path / "api.json")


async def test_a_valid_empty_list_is_no_endpoints(tmp_path: Path) -> None:
    (tmp_path / "api.json").write_text("[]")
    assert await first_answer(tmp_path / "api.json") == []

"""Fixtures the integration tests share beyond tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd import Etcd


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    """A real etcd on loopback, stopped after the test (tests/support/etcd.py)."""
    server = Etcd(tmp_path / "etcd-data")
    server.start()
    yield server
    server.stop()

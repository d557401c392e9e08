"""Requests through meshnode with curl, for tests that care about status, headers and body."""

from __future__ import annotations

import json
import re
from typing import Any

import trio

from tests.conftest import require


async def get(address: object, authority: str, path: str = "/", *extra: str) -> tuple[int, bytes]:
    """Status and body of a request through the outbound listener."""
    status, _, body = await fetch(address, authority, path, *extra)
    return status, body


async def fetch(
    address: object, authority: str, path: str = "/", *extra: str
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of a request through meshnode."""
    result = await trio.run_process(
        [
            require("curl"),
            "-s",
            "-i",
            "--http2-prior-knowledge",
            "-H",
            f"host: {authority}",
            *extra,
            f"http://{address}{path}",
        ],
        capture_stdout=True,
        check=True,
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def admin(address: object, method: str, path: str) -> tuple[int, Any]:
    result = await trio.run_process(
        [
            *(require("curl"), "-s", "-X", method, "-H", "x-meshnode-admin: 1"),
            *("-w", "\n%{http_code}", f"http://{address}{path}"),
        ],
        capture_stdout=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), json.loads(body)


async def metrics(address: object) -> str:
    """The node's Prometheus exposition, as text."""
    result = await trio.run_process(
        [require("curl"), "-s", "--fail", f"http://{address}/metrics"], capture_stdout=True
    )
    return result.stdout.decode()


def sample(exposition: str, name: str) -> float:
    """The value of the sample ``name`` (labels included, as exposed) in ``exposition``."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.MULTILINE)
    assert found is not None, f"{name} is not exposed"
    return float(found.group(1))

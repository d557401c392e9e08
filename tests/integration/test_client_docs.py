"""docs/client.md's example runs as written, on its own policy files, against three real
services (only their ports differ from the page's)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import trio

from tests.support.user_service import UserService

DOC = Path(__file__).parents[2] / "docs" / "client.md"
TEXT = DOC.read_text()
FILES = dict(re.findall(r"```toml\n# (policies/\S+)\n(.*?)```", TEXT, re.S))
(EXAMPLE,) = re.findall(r"```python\n(.*?)```", TEXT, re.S)
PAGE_ENDPOINTS = ("127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003")


async def test_the_example_runs_and_prints_what_the_page_says(
    tmp_path, nursery, monkeypatch, capsys
) -> None:
    assert set(FILES) == {"policies/node.toml", "policies/user-service.toml"}
    instances = [UserService(name) for name in ("one", "two", "three")]
    addresses = [await instance.start(nursery) for instance in instances]
    (tmp_path / "policies").mkdir()
    for name, text in FILES.items():
        served = text
        for page, real in zip(PAGE_ENDPOINTS, addresses, strict=True):
            served = served.replace(page, real)
        (tmp_path / name).write_text(served)
    monkeypatch.chdir(tmp_path)
    # The page's trio.run, on a thread of its own: this test's loop keeps serving.
    code = compile(EXAMPLE, str(DOC), "exec")
    await trio.to_thread.run_sync(exec, code, {"__name__": "__docs__"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "201 John"
    figures = ast.literal_eval(printed[1])
    assert figures["load_balancer"]["total_instances"] == 3
    assert figures["circuit_breakers"] == [
        {"service": "user-service", "state": "closed", "error_rate": 0.0, "total_requests": 1}
    ]
    assert figures["retry"] == {"total_attempts": 1, "success_rate": None, "avg_retry_count": 0.0}
    assert sum(instance.requests for instance in instances) >= 1

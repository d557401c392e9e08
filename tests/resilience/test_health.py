"""The health-check manager, on a mock clock, and the node's own checks for real."""

from __future__ import annotations

import trio

from meshnode.resilience import CheckOutcome, CommonHealthChecks, HealthCheck, HealthCheckManager
from tests.conftest import upstream_toml, write_policies
from tests.support.client import admin


async def test_thresholds_and_critical_checks(nursery, autojump_clock) -> None:
    results = iter([True, False, False, True, True])

    async def flaky() -> CheckOutcome:
        healthy = next(results, True)
        return CheckOutcome(healthy, "fine" if healthy else "broken", {"n": 1})

    manager = HealthCheckManager()
    manager.register_check(
        HealthCheck(
            "db", flaky, critical=True, interval=1, failure_threshold=2, success_threshold=2
        )
    )
    manager.register_check(HealthCheck("cache", lambda: _answer(False), critical=False, interval=1))
    await nursery.start(manager.run)
    await trio.sleep(0.5)  # read between the rounds, which run at whole seconds
    statuses = []
    for _ in range(5):
        statuses.append(manager.get_readiness().http_status)
        await trio.sleep(1)
    assert statuses == [200, 200, 503, 503, 200]  # two failures to fail, two successes back
    report = manager.get_health()
    assert {c["name"]: c["status"] for c in report.checks} == {
        "db": "healthy",
        "cache": "unhealthy",
    }
    assert next(c for c in report.checks if c["name"] == "db")["metadata"] == {"n": 1}
    liveness = manager.get_liveness()
    assert (liveness.status, liveness.checks, liveness.http_status) == ("healthy", [], 200)


async def _answer(value: bool) -> bool:
    return value


async def test_timeouts_and_exceptions_are_failures(autojump_clock) -> None:
    async def hangs() -> bool:
        await trio.sleep_forever()
        return True

    async def raises() -> bool:
        raise ConnectionError("refused")

    manager = HealthCheckManager(
        [HealthCheck("slow", hangs, timeout=2), HealthCheck("down", raises)]
    )
    for check in (HealthCheck("slow", hangs, timeout=2), HealthCheck("down", raises)):
        await manager.run_once(check)
    messages = {r.name: r.message for r in manager.results()}
    assert messages == {"slow": "no answer within 2s", "down": "ConnectionError: refused"}


async def test_common_checks(tmp_path) -> None:
    manager = HealthCheckManager()
    checks = [
        CommonHealthChecks.memory("memory", 100.0),
        CommonHealthChecks.disk("disk", str(tmp_path), 100.0),
        CommonHealthChecks.command("true", ["sh", "-c", "echo all good"]),
        CommonHealthChecks.command("false", ["sh", "-c", "echo bad; exit 3"]),
        CommonHealthChecks.tcp("closed", "127.0.0.1", 9, timeout=2),
    ]
    for check in checks:
        manager.register_check(check)
        await manager.run_once(check)
    results = {r.name: (r.healthy, r.message) for r in manager.results()}
    assert results["memory"][0] and results["memory"][1].endswith("% of memory in use")
    assert results["disk"][0]
    assert results["true"] == (True, "all good")
    assert results["false"] == (False, "bad")
    assert not results["closed"][0]


async def test_node_readiness_follows_a_failing_custom_check(tmp_path, nursery, running) -> None:
    flag = tmp_path / "ready-flag"
    flag.write_text("")
    write_policies(tmp_path / "p", {"api": upstream_toml("api", "127.0.0.1:9")})
    node_toml = tmp_path / "p" / "node.toml"
    node_toml.write_text(
        node_toml.read_text()
        + f"""
[[health_checks]]
name = "flag"
kind = "command"
command = ["test", "-f", "{flag}"]
critical = true
interval = "100ms"
"""
    )
    _, addresses = await running(tmp_path / "p")
    assert (await admin(addresses.admin[0], "GET", "/health/ready"))[0] == 200
    flag.unlink()
    with trio.fail_after(10):
        while (await admin(addresses.admin[0], "GET", "/health/ready"))[0] != 503:
            await trio.sleep(0.05)
    _, report = await admin(addresses.admin[0], "GET", "/health")
    check = next(c for c in report["checks"] if c["name"] == "flag")
    assert (check["type"], check["critical"], check["status"]) == ("readiness", True, "unhealthy")
    live = next(c for c in report["checks"] if c["name"] == "event-loop")
    assert live["message"].startswith("loop lag ")
    supervisors = next(c for c in report["checks"] if c["name"] == "supervisors")
    assert (supervisors["status"], supervisors["message"]) == (
        "healthy",
        "1 of 1 upstream group(s) supervised",
    )

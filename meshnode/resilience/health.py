"""``HealthCheckManager``: the seed's health checks for any Trio program, and the node's own.

    manager = HealthCheckManager()
    manager.register_check(CommonHealthChecks.memory("memory-usage", 90))
    manager.register_check(CommonHealthChecks.database("db", ping_database, critical=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        status, report = manager.get_readiness()   # 200 or 503, and the JSON body

A check is an async function answering ``CheckOutcome`` (or just a bool). It
runs every ``interval``, bounded by ``timeout``; ``failure_threshold``
failures in a row make it unhealthy, ``success_threshold`` successes healthy
again (it starts healthy). Only critical checks decide the status.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from meshnode.resilience.core.health import CheckResult, CheckType, health_report


@attrs.frozen
class CheckOutcome:
    healthy: bool
    message: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)


CheckFunction = Callable[[], Awaitable[CheckOutcome | bool]]


@attrs.frozen
class HealthCheck:
    name: str
    check: CheckFunction
    type: CheckType = "readiness"
    critical: bool = True
    interval: float = 10.0
    timeout: float = 5.0
    failure_threshold: int = 1
    success_threshold: int = 1


@attrs.define
class _State:
    healthy: bool = True
    message: str = "not run yet"
    streak: int = 0  # > 0 successes in a row, < 0 failures


class HealthCheckManager:
    def __init__(self, checks: Sequence[HealthCheck] = ()) -> None:
        self._checks: dict[str, HealthCheck] = {}
        self._states: dict[str, _State] = {}
        for check in checks:
            self.register_check(check)

    def register_check(self, check: HealthCheck) -> None:
        self._checks[check.name] = check
        self._states[check.name] = _State()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every check on its interval until cancelled; started after the first round."""
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as first_round:
                for check in self._checks.values():
                    first_round.start_soon(self.run_once, check)
            task_status.started()
            for check in self._checks.values():
                nursery.start_soon(self._repeat, check)

    async def _repeat(self, check: HealthCheck) -> None:
        while True:
            await trio.sleep(check.interval)
            await self.run_once(check)

    async def run_once(self, check: HealthCheck) -> None:
        outcome: CheckOutcome
        with trio.move_on_after(check.timeout) as scope:
            try:
                answer = await check.check()
                outcome = answer if isinstance(answer, CheckOutcome) else CheckOutcome(answer)
            except Exception as exc:
                outcome = CheckOutcome(False, f"{type(exc).__name__}: {exc}")
        if scope.cancelled_caught:
            outcome = CheckOutcome(False, f"no answer within {check.timeout:g}s")
        state = self._states[check.name]
        state.streak = max(state.streak, 0) + 1 if outcome.healthy else min(state.streak, 0) - 1
        state.message = outcome.message or ("ok" if outcome.healthy else "failed")
        if state.streak <= -check.failure_threshold:
            state.healthy = False
        elif state.streak >= check.success_threshold:
            state.healthy = True

    def results(self) -> list[CheckResult]:
        return [
            CheckResult(
                name,
                check.type,
                check.critical,
                self._states[name].healthy,
                self._states[name].message,
            )
            for name, check in self._checks.items()
        ]

    def get_liveness(self) -> tuple[int, dict[str, Any]]:
        return health_report(self.results(), "liveness")

    def get_readiness(self) -> tuple[int, dict[str, Any]]:
        return health_report(self.results(), "readiness")

    def get_health(self) -> tuple[int, dict[str, Any]]:
        return health_report(self.results(), None)


class CommonHealthChecks:
    """Ready-made checks: memory, disk, a TCP port, an HTTP URL, a command, a database."""

    @staticmethod
    def memory(
        name: str,
        threshold_percent: float,
        *,
        critical: bool = False,
        type: CheckType = "readiness",
    ) -> HealthCheck:
        async def check() -> CheckOutcome:
            used = memory_used_percent()
            return CheckOutcome(
                used < threshold_percent,
                f"{used:.1f}% of memory in use",
                {"used_percent": round(used, 1)},
            )

        return HealthCheck(name, check, type, critical)

    @staticmethod
    def disk(
        name: str,
        path: str,
        threshold_percent: float,
        *,
        critical: bool = False,
        type: CheckType = "readiness",
    ) -> HealthCheck:
        async def check() -> CheckOutcome:
            usage = shutil.disk_usage(path)
            used = usage.used * 100 / usage.total
            return CheckOutcome(used < threshold_percent, f"{path}: {used:.1f}% used")

        return HealthCheck(name, check, type, critical)

    @staticmethod
    def tcp(
        name: str,
        host: str,
        port: int,
        *,
        critical: bool = True,
        type: CheckType = "readiness",
        timeout: float = 2.0,
    ) -> HealthCheck:
        async def check() -> CheckOutcome:
            stream = await trio.open_tcp_stream(host, port)
            await stream.aclose()
            return CheckOutcome(True, f"{host}:{port} accepts connections")

        return HealthCheck(name, check, type, critical, timeout=timeout)

    @staticmethod
    def external_service(
        name: str,
        url: str,
        *,
        critical: bool = False,
        type: CheckType = "readiness",
        timeout: float = 2.0,
    ) -> HealthCheck:
        """An HTTP(S) URL answering 2xx or 3xx."""

        async def check() -> CheckOutcome:
            status = await trio.to_thread.run_sync(
                _http_status, url, timeout, abandon_on_cancel=True
            )
            return CheckOutcome(200 <= status < 400, f"{url}: status {status}")

        return HealthCheck(name, check, type, critical, timeout=timeout)

    @staticmethod
    def command(
        name: str,
        argv: Sequence[str],
        *,
        critical: bool = False,
        type: CheckType = "readiness",
        timeout: float = 5.0,
    ) -> HealthCheck:
        """A command that exits 0 when all is well (its last output line is the message)."""

        async def check() -> CheckOutcome:
            result = await trio.run_process(
                list(argv),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            output = (result.stdout or result.stderr).decode(errors="replace").strip()
            message = output.splitlines()[-1] if output else f"exit {result.returncode}"
            return CheckOutcome(result.returncode == 0, message)

        return HealthCheck(name, check, type, critical, timeout=timeout)

    @staticmethod
    def database(name: str, check: CheckFunction, *, critical: bool = True) -> HealthCheck:
        """Any async ping of a database (or anything else) that answers or raises."""
        return HealthCheck(name, check, "readiness", critical)


def memory_used_percent() -> float:
    """System memory in use, from /proc/meminfo (MemAvailable), as ``free`` reports it."""
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0])
    total = fields["MemTotal"]
    return (total - fields.get("MemAvailable", fields.get("MemFree", 0))) * 100 / total


def _http_status(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


__all__ = ["CheckOutcome", "CommonHealthChecks", "HealthCheck", "HealthCheckManager"]

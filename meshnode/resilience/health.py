"""``HealthCheckManager``: the seed's health checks for any Trio program, and the node's own.

    manager = HealthCheckManager(readiness_interval="3s", failure_threshold=5)
    manager.register_check(CommonHealthChecks.memory("memory-usage", 90))
    manager.register_check(CommonHealthChecks.database("postgres", ping_database, True))
    async with manager:                        # or: await manager.start() ... manager.stop()
        readiness = manager.get_readiness()    # .status, .checks, .http_status, .to_json()

A check is a function, plain or async, answering a bool, a ``CheckOutcome``, or the seed's
result mapping ``{"status": "healthy" | "degraded" | "unhealthy", "message": ...,
"metadata": {...}}``; raising, or no answer within ``timeout``, is a failure. It runs
every ``interval``; ``failure_threshold`` failures in a row make it unhealthy,
``success_threshold`` successes healthy again (it starts healthy). Where a check leaves
them unset, the manager's defaults apply (``liveness_interval`` or ``readiness_interval``
by its type). Only critical checks decide the status; a degraded one is reported, and the
answer stays 200.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import attrs
import trio

from meshnode.resilience.calls import invoke
from meshnode.resilience.core.health import CheckResult, CheckType, health_report
from meshnode.resilience.durations import DurationLike, optional_seconds, seconds

STATUSES = ("healthy", "degraded", "unhealthy")


@attrs.frozen
class CheckOutcome:
    healthy: bool
    message: str = ""
    metadata: dict[str, Any] = attrs.field(factory=dict)
    degraded: bool = False

    @classmethod
    def of(cls, answer: object) -> CheckOutcome:
        """A check's answer, whichever shape the seed or Python gave it."""
        if isinstance(answer, CheckOutcome):
            return answer
        if isinstance(answer, bool):
            return cls(answer)
        if isinstance(answer, Mapping):
            status = answer.get("status")
            if status not in STATUSES:
                raise ValueError(f"a check answered status {status!r}: one of {STATUSES}")
            return cls(
                status != "unhealthy",
                str(answer.get("message", "")),
                dict(answer.get("metadata") or {}),
                degraded=status == "degraded",
            )
        raise TypeError(
            f"a check answered {answer!r}: answer a bool, a CheckOutcome, or a mapping "
            'with "status" ("healthy", "degraded" or "unhealthy")'
        )


CheckFunction = Callable[[], Awaitable[object] | object]


def _interval(value: DurationLike | None) -> float | None:
    return optional_seconds(value, "interval")


def _timeout(value: DurationLike) -> float:
    return seconds(value, "timeout")


@attrs.frozen
class HealthCheck:
    """One check; ``None`` for ``interval`` and the thresholds: the manager's default."""

    name: str
    check: CheckFunction
    type: CheckType = "readiness"
    critical: bool = True
    interval: float | None = attrs.field(default=None, converter=_interval)
    timeout: float = attrs.field(default=5.0, converter=_timeout)
    failure_threshold: int | None = None
    success_threshold: int | None = None


@attrs.frozen
class HealthReport:
    """What ``get_liveness``, ``get_readiness`` and ``get_health`` answer: the seed's
    report, and the HTTP status to serve it with (503 when a critical check fails)."""

    status: str
    checks: list[dict[str, Any]]
    http_status: int

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "checks": self.checks})


@attrs.define
class _State:
    healthy: bool = True
    degraded: bool = False
    message: str = "not run yet"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    streak: int = 0  # > 0 successes in a row, < 0 failures


class HealthCheckManager:
    def __init__(
        self,
        checks: Sequence[HealthCheck] = (),
        *,
        liveness_interval: DurationLike = 10.0,
        readiness_interval: DurationLike = 10.0,
        failure_threshold: int = 1,
        success_threshold: int = 1,
    ) -> None:
        """The keyword arguments are the defaults of checks that leave them unset."""
        self._intervals = {
            "liveness": seconds(liveness_interval, "liveness_interval"),
            "readiness": seconds(readiness_interval, "readiness_interval"),
        }
        self._thresholds = (failure_threshold, success_threshold)
        self._checks: dict[str, HealthCheck] = {}
        self._states: dict[str, _State] = {}
        self._running: trio.CancelScope | None = None
        for check in checks:
            self.register_check(check)

    def register_check(self, check: HealthCheck | Mapping[str, Any]) -> None:
        """A ``HealthCheck``, or the seed's object: ``{"name", "check", "type", "critical"}``."""
        if isinstance(check, Mapping):
            check = HealthCheck(**check)
        failures, successes = self._thresholds
        check = attrs.evolve(
            check,
            interval=check.interval if check.interval is not None else self._intervals[check.type],
            failure_threshold=check.failure_threshold or failures,
            success_threshold=check.success_threshold or successes,
        )
        self._checks[check.name] = check
        self._states[check.name] = _State()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every check on its interval until cancelled; started after the first round."""
        await self._run(task_status.started)

    async def start(self) -> None:
        """The seed's ``start()``: the first round now, then the checks run in the
        background of this ``trio.run`` (a system task: there is no nursery here to
        outlive the call) until ``stop()`` or the run's end."""
        if self._running is not None:
            raise RuntimeError("the health checks run already")
        scope = self._running = trio.CancelScope()
        first_round = trio.Event()

        async def background() -> None:
            with scope:
                await self._run(first_round.set)

        trio.lowlevel.spawn_system_task(background)
        await first_round.wait()

    async def _run(self, first_round_done: Callable[[], object]) -> None:
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as first_round:
                for check in self._checks.values():
                    first_round.start_soon(self.run_once, check)
            first_round_done()
            for check in self._checks.values():
                nursery.start_soon(self._repeat, check)

    def stop(self) -> None:
        if self._running is not None:
            self._running.cancel()
            self._running = None

    async def __aenter__(self) -> HealthCheckManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _repeat(self, check: HealthCheck) -> None:
        assert check.interval is not None
        while True:
            await trio.sleep(check.interval)
            await self.run_once(check)

    async def run_once(self, check: HealthCheck) -> None:
        outcome: CheckOutcome
        with trio.move_on_after(check.timeout) as scope:
            try:
                outcome = CheckOutcome.of(await invoke(check.check))
            except Exception as exc:
                outcome = CheckOutcome(False, f"{type(exc).__name__}: {exc}")
        if scope.cancelled_caught:
            outcome = CheckOutcome(False, f"no answer within {check.timeout:g}s")
        state = self._states[check.name]
        state.streak = max(state.streak, 0) + 1 if outcome.healthy else min(state.streak, 0) - 1
        state.message = outcome.message or ("ok" if outcome.healthy else "failed")
        state.metadata = outcome.metadata
        state.degraded = outcome.degraded
        if state.streak <= -(check.failure_threshold or 1):
            state.healthy = False
        elif state.streak >= (check.success_threshold or 1):
            state.healthy = True

    def results(self) -> list[CheckResult]:
        return [
            CheckResult(
                name,
                check.type,
                check.critical,
                self._states[name].healthy,
                self._states[name].message,
                self._states[name].degraded,
                self._states[name].metadata,
            )
            for name, check in self._checks.items()
        ]

    def get_liveness(self) -> HealthReport:
        return self._report("liveness")

    def get_readiness(self) -> HealthReport:
        return self._report("readiness")

    def get_health(self) -> HealthReport:
        return self._report(None)

    def _report(self, kind: CheckType | None) -> HealthReport:
        http_status, body = health_report(self.results(), kind)
        return HealthReport(body["status"], body["checks"], http_status)


class CommonHealthChecks:
    """Ready-made checks: memory, disk, a TCP port, an HTTP URL, a command, a database."""

    @staticmethod
    def memory(
        name: str,
        threshold_percent: float,
        critical: bool = False,
        *,
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
        target: str | CheckFunction,
        critical: bool = False,
        *,
        type: CheckType = "readiness",
        timeout: DurationLike = 2.0,
    ) -> HealthCheck:
        """An HTTP(S) URL answering 2xx or 3xx, or, as in the seed, any function that pings
        the service (``redis.ping``) and answers as a check does."""
        if callable(target):
            return HealthCheck(name, target, type, critical, timeout=timeout)
        url = target

        async def check() -> CheckOutcome:
            status = await trio.to_thread.run_sync(
                _http_status, url, seconds(timeout, "timeout"), abandon_on_cancel=True
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
    def database(
        name: str, check: CheckFunction, critical: bool = True, *, timeout: DurationLike = 5.0
    ) -> HealthCheck:
        """Any ping of a database (or anything else), plain or async, that answers as a
        check does, or raises."""
        return HealthCheck(name, check, "readiness", critical, timeout=timeout)


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

"""The admin commands of ``meshnode`` (SPEC section 8): clients of the admin API.

Tables for people, ``--json`` for scripts. The node is found with ``--admin``
or ``MESHNODE_ADMIN``; a token for mutating calls with ``--token-file`` or
``MESHNODE_ADMIN_TOKEN``. Exit codes: 0 done, 1 the node said no (or is not
healthy), 2 the node could not be reached (one line, no traceback).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

import click
import trio
import trio_websocket

from meshnode.admin.origins import ADMIN_HEADER

DEFAULT_ADMIN = "http://127.0.0.1:15000"
UNREACHABLE = 2

admin_option = click.option(
    "--admin",
    default=DEFAULT_ADMIN,
    show_default=True,
    envvar="MESHNODE_ADMIN",
    help="The node's admin listener (or MESHNODE_ADMIN).",
)
token_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="The admin token, for a node whose admin listener is not on loopback "
    "(or MESHNODE_ADMIN_TOKEN).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _token(token_file: str | None) -> str | None:
    if token_file is not None:
        with open(token_file) as handle:
            return handle.read().strip()
    return os.environ.get("MESHNODE_ADMIN_TOKEN")


def call(admin: str, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
    """One admin API call; exits with one clear line when the node cannot be reached."""
    request = urllib.request.Request(admin.rstrip("/") + path, method=method)
    request.add_header(ADMIN_HEADER, "1")  # the admin plane takes changes only with it
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        click.echo(f"meshnode: cannot reach the admin API at {admin}: {reason}", err=True)
        raise SystemExit(UNREACHABLE) from None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@click.command()
@admin_option
@json_option
def status(admin: str, as_json: bool) -> None:
    """Is the node ready, and which policies does it run? Exit 1 when not ready."""
    health_status, health = call(admin, "GET", "/health")
    _, policies = call(admin, "GET", "/admin/policies")
    if as_json:
        click.echo(json.dumps({"health": health, "policies": policies}, indent=2))
    else:
        click.echo(f"status:     {health['status']}")
        for check in health["checks"]:
            if check["status"] != "healthy":
                click.echo(f"  {check['name']}: {check['status']} ({check['message']})")
        click.echo(f"policies:   version {policies['version']} from {policies['directory']}")
        click.echo(f"loaded at:  {policies['loaded_at']}")
        click.echo(f"upstreams:  {', '.join(policies['upstreams']) or 'none'}")
        reloads = policies["reloads"]
        click.echo(f"reloads:    {reloads['applied']} applied, {reloads['rejected']} rejected")
        if policies["last_error"]:
            error = policies["last_error"]
            click.echo(f"last error: {error['at']} ({error['trigger']})")
            for line in error["errors"]:
                click.echo(f"  {line}")
    if health_status != 200:
        raise SystemExit(1)


@click.command()
@admin_option
@json_option
def upstreams(admin: str, as_json: bool) -> None:
    """Each upstream: breaker, endpoints, load and failures."""
    _, report = call(admin, "GET", "/admin/upstreams")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    rows = [
        [
            "UPSTREAM",
            "BREAKER",
            "ENDPOINTS",
            "IN-FLIGHT",
            "REQUESTS",
            "5XX",
            "RETRIES",
            "RESTARTS",
            "STATE",
        ]
    ]
    for name, upstream in report["upstreams"].items():
        endpoints = upstream["endpoints"]
        healthy = sum(1 for e in endpoints if e["health"] == "healthy" and not e["ejected"])
        requests = upstream["requests"]
        rows.append(
            [
                name,
                upstream["breaker"]["state"],
                f"{healthy}/{len(endpoints)}",
                str(upstream["in_flight"]),
                str(sum(requests.values())),
                str(sum(n for code, n in requests.items() if code.startswith("5"))),
                str(upstream["retries"]["retried"]),
                str(sum(upstream["actor_restarts"].values())),
                "failed" if upstream["failed"] else "ok",
            ]
        )
    click.echo(_table(rows))


@click.command()
@admin_option
@token_option
@json_option
def reload(admin: str, token_file: str | None, as_json: bool) -> None:
    """Reload the node's policies now; exit 1 if they were rejected (the old ones stay)."""
    code, answer = call(admin, "POST", "/admin/reload", _token(token_file))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif answer.get("applied"):
        changes = answer.get("changes") or {}
        listed = "; ".join(f"{kind} {', '.join(names)}" for kind, names in changes.items() if names)
        click.echo(
            f"policies reloaded: version {answer['version']}"
            + (f" ({listed})" if listed else " (no change)")
        )
    else:
        _refused(answer, code)
    if code != 200:
        raise SystemExit(1)


@click.command()
@admin_option
@token_option
@json_option
def drain(admin: str, token_file: str | None, as_json: bool) -> None:
    """Stop taking new connections and let requests in flight finish (readiness turns 503)."""
    code, answer = call(admin, "POST", "/admin/drain", _token(token_file))
    _report(code, answer, as_json, "draining: no new connections; requests in flight finish")


@click.group()
def sessions() -> None:
    """Session affinity."""


@sessions.command("clear")
@click.argument("client")
@admin_option
@token_option
@json_option
def clear_sessions(client: str, admin: str, token_file: str | None, as_json: bool) -> None:
    """Forget CLIENT's session affinity, so its next request is balanced afresh."""
    path = f"/admin/sessions/{urllib.parse.quote(client, safe='')}"
    code, answer = call(admin, "DELETE", path, _token(token_file))
    _report(code, answer, as_json, f"sessions of {client} forgotten: {answer.get('forgotten')}")


@click.group()
def breakers() -> None:
    """Operator overrides of circuit breakers."""


@breakers.command("force")
@click.argument("upstream")
@click.argument("state", type=click.Choice(["open", "closed", "auto"]))
@admin_option
@token_option
@json_option
def force_breaker(
    upstream: str, state: str, admin: str, token_file: str | None, as_json: bool
) -> None:
    """Force UPSTREAM's breaker open or closed, or give it back to its policy (auto)."""
    path = f"/admin/breakers/{urllib.parse.quote(upstream, safe='')}?state={state}"
    code, answer = call(admin, "POST", path, _token(token_file))
    _report(
        code,
        answer,
        as_json,
        f"breaker of {upstream}: {answer.get('state')} (override {answer.get('override')})",
    )


@click.group()
def queue() -> None:
    """The durable queue fallback: entries and dead letters."""


@queue.command("list")
@click.argument("upstream")
@admin_option
@json_option
def queue_list(upstream: str, admin: str, as_json: bool) -> None:
    """UPSTREAM's queued requests and dead letters."""
    code, answer = call(admin, "GET", f"/admin/queue/{urllib.parse.quote(upstream, safe='')}")
    if as_json or code != 200:
        _report(code, answer, as_json, "")
        return
    click.echo(
        f"{answer['depth']} queued ({answer['bytes']} bytes, oldest "
        f"{answer['oldest_age_seconds']:.0f}s), {answer['dead_letters']} dead letter(s)"
    )
    rows = [["", "ID", "METHOD", "PATH", "ATTEMPTS", "LAST ERROR"]]
    for kind, entries in (("queued", answer["entries"]), ("dead", answer["dead_letters"])):
        rows += [
            [kind, str(e["id"]), e["method"], e["path"], str(e["attempts"]), e["last_error"] or "-"]
            for e in entries
        ]
    if len(rows) > 1:
        click.echo(_table(rows))


@queue.command("inspect")
@click.argument("upstream")
@click.argument("entry", type=int)
@admin_option
def queue_inspect(upstream: str, entry: int, admin: str) -> None:
    """One queued (or dead) request: its headers (secrets redacted) and the start of its body."""
    code, answer = call(
        admin, "GET", f"/admin/queue/{urllib.parse.quote(upstream, safe='')}/{entry}"
    )
    _report(code, answer, True, "")


@queue.command("retry")
@click.argument("upstream")
@admin_option
@token_option
@json_option
def queue_retry(upstream: str, admin: str, token_file: str | None, as_json: bool) -> None:
    """Send UPSTREAM's dead letters back to its queue."""
    path = f"/admin/queue/{urllib.parse.quote(upstream, safe='')}/retry"
    code, answer = call(admin, "POST", path, _token(token_file))
    _report(code, answer, as_json, f"{answer.get('requeued')} dead letter(s) queued again")


@queue.command("purge")
@click.argument("upstream")
@admin_option
@token_option
@json_option
def queue_purge(upstream: str, admin: str, token_file: str | None, as_json: bool) -> None:
    """Drop UPSTREAM's queued requests and dead letters."""
    path = f"/admin/queue/{urllib.parse.quote(upstream, safe='')}"
    code, answer = call(admin, "DELETE", path, _token(token_file))
    _report(code, answer, as_json, f"{answer.get('purged')} request(s) purged")


@click.command()
@admin_option
@json_option
@click.option("--count", type=int, default=None, help="Stop after this many events.")
def events(admin: str, as_json: bool, count: int | None) -> None:
    """Follow the node's events live (Ctrl-C stops); --json prints one object per line."""
    url = admin.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        trio.run(_follow, url + "/admin/events", as_json, count)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person stops following events: not an error
    except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
        click.echo(f"meshnode: cannot follow events at {admin}: {exc}", err=True)
        raise SystemExit(UNREACHABLE) from None


async def _follow(url: str, as_json: bool, count: int | None) -> None:
    seen = 0
    async with trio_websocket.open_websocket_url(url) as websocket:
        while count is None or seen < count:
            event = json.loads(await websocket.get_message())
            seen += 1
            click.echo(json.dumps(event) if as_json else _event_line(event))


def _event_line(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(event.pop("timestamp")).strftime("%H:%M:%S")
    kind = event.pop("type")
    details = " ".join(f"{key}={_short(value)}" for key, value in event.items())
    return f"{when} {kind} {details}"


def _short(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _refused(answer: dict[str, Any], code: int) -> None:
    if "errors" in answer:
        click.echo(f"policies rejected; version {answer.get('version')} stays in force:", err=True)
        for line in answer["errors"]:
            click.echo(f"  {line}", err=True)
    else:
        click.echo(f"meshnode: {answer.get('error', code)}", err=True)


def _report(code: int, answer: dict[str, Any], as_json: bool, success: str) -> None:
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif code < 300:
        click.echo(success)
    else:
        _refused(answer, code)
    if code >= 300:
        raise SystemExit(1)


ADMIN_COMMANDS = [status, upstreams, events, reload, drain, sessions, breakers, queue]

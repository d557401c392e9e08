"""The ``meshnode`` command line (SPEC section 8)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click
import trio

from meshnode.demo import answer
from meshnode.net.listener import H2Listener
from meshnode.node import Node
from meshnode.policy import Address, PolicyError, load_policies
from meshnode.reload import POLL_INTERVAL

DEFAULT_POLICIES = "policies"
DEFAULT_ADMIN = "http://127.0.0.1:15000"


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group()
@click.version_option(package_name="meshnode")
def main() -> None:
    """A standalone service mesh node: HTTP/2 proxying with resilience policies."""


@main.command()
@click.option(
    "--policies",
    "directory",
    default=DEFAULT_POLICIES,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The policies directory.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help="Reload when the policies directory changes (SIGHUP and the admin API always do).",
)
def serve(directory: Path, log_level: str, watch: bool) -> None:
    """Run the node (SIGHUP reloads; SIGTERM or SIGINT drains, then exits)."""
    _configure_logging(log_level)
    try:
        policies = load_policies(directory)
    except PolicyError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        raise SystemExit(1) from None
    try:
        trio.run(Node(policies, poll_interval=POLL_INTERVAL if watch else None).run)
    except OSError as exc:
        click.echo(f"meshnode: cannot start: {exc}", err=True)
        raise SystemExit(1) from None


@main.group()
def policy() -> None:
    """Check policy files."""


@policy.command()
@click.argument(
    "directory", default=DEFAULT_POLICIES, type=click.Path(file_okay=False, path_type=Path)
)
def validate(directory: Path) -> None:
    """Exit 0 if DIRECTORY's policies are valid, else 1 with every error listed."""
    try:
        policies = load_policies(directory)
    except PolicyError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        click.echo(f"{len(exc.lines)} error(s) in {directory}", err=True)
        raise SystemExit(1) from None
    names = ", ".join(sorted(policies.upstreams)) or "none"
    click.echo(f"{directory}: valid (version {policies.version}; upstreams: {names})")


def _admin_call(admin: str, method: str, path: str) -> tuple[int, Any]:
    """One admin API call; exits with one clear line when the node cannot be reached."""
    request = urllib.request.Request(admin.rstrip("/") + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        click.echo(f"meshnode: cannot reach the admin API at {admin}: {reason}", err=True)
        raise SystemExit(2) from None


admin_option = click.option(
    "--admin", default=DEFAULT_ADMIN, show_default=True, help="The node's admin listener."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")


@main.command()
@admin_option
@json_option
def reload(admin: str, as_json: bool) -> None:
    """Reload the node's policies now; exit 1 if they were rejected (the old ones stay)."""
    status, answer = _admin_call(admin, "POST", "/admin/reload")
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
        click.echo(f"policies rejected; version {answer.get('version')} stays in force:", err=True)
        for line in answer.get("errors", []):
            click.echo(f"  {line}", err=True)
    if status != 200:
        raise SystemExit(1)


@main.group()
def breakers() -> None:
    """Operator overrides of circuit breakers."""


@breakers.command("force")
@click.argument("upstream")
@click.argument("state", type=click.Choice(["open", "closed", "auto"]))
@admin_option
@json_option
def force_breaker(upstream: str, state: str, admin: str, as_json: bool) -> None:
    """Force UPSTREAM's breaker open or closed, or give it back to its policy (auto)."""
    path = f"/admin/breakers/{urllib.parse.quote(upstream)}?state={state}"
    status, answer = _admin_call(admin, "POST", path)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    elif status == 200:
        click.echo(f"breaker of {upstream}: {answer['state']} (override {answer['override']})")
    else:
        click.echo(f"meshnode: {answer.get('error', status)}", err=True)
    if status != 200:
        raise SystemExit(1)


@main.command("demo-upstream")
@click.option(
    "--address",
    default="127.0.0.1:18080",
    show_default=True,
    help="Where the demo HTTP/2 server listens.",
)
def demo_upstream(address: str) -> None:
    """Run the small HTTP/2 server that the example policies route to."""
    _configure_logging("info")
    bound = Address.parse(address)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(H2Listener("demo", answer).serve, bound)
            logging.getLogger("meshnode.demo").info(
                "demo upstream listening on %s", ",".join(map(str, addresses))
            )

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)

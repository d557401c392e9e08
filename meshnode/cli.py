"""The ``meshnode`` command line (SPEC section 8)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import click
import trio

from meshnode import logs
from meshnode.cli_admin import ADMIN_COMMANDS
from meshnode.demo import answer
from meshnode.logs import LogFormat
from meshnode.net.listener import H2Listener
from meshnode.node import Node
from meshnode.policy import Address, PolicyError, load_policies
from meshnode.reload import POLL_INTERVAL

DEFAULT_POLICIES = "policies"


@click.group()
@click.version_option(package_name="meshnode")
def main() -> None:
    """A standalone service mesh node: HTTP/2 proxying with resilience policies."""


for command in ADMIN_COMMANDS:
    main.add_command(command)


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
    "--log-format",
    default="human",
    show_default=True,
    type=click.Choice(["human", "json"]),
    help="Human lines, or one JSON object per line.",
)
@click.option(
    "--watch/--no-watch",
    default=True,
    show_default=True,
    help="Reload when the policies directory changes (SIGHUP and the admin API always do).",
)
def serve(directory: Path, log_level: str, log_format: LogFormat, watch: bool) -> None:
    """Run the node (SIGHUP reloads; SIGTERM or SIGINT drains, then exits)."""
    logs.configure(log_level, log_format)
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


@main.command("demo-upstream")
@click.option(
    "--address",
    default="127.0.0.1:18080",
    show_default=True,
    help="Where the demo HTTP/2 server listens.",
)
def demo_upstream(address: str) -> None:
    """Run the small HTTP/2 server that the example policies route to."""
    logs.configure("info")
    bound = Address.parse(address)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(H2Listener("demo", answer).serve, bound)
            logging.getLogger("meshnode.demo").info(
                "demo upstream listening on %s", ",".join(map(str, addresses))
            )

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)

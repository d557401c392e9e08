"""The ``meshnode`` command line (SPEC section 8)."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
from pathlib import Path
from typing import Any

import click
import trio

from meshnode import certs as certificates
from meshnode import logs
from meshnode.cli_admin import ADMIN_COMMANDS
from meshnode.demo import answer
from meshnode.fleet.rollout import RolloutStopped, fleet_status, status_table
from meshnode.fleet.rollout import push as fleet_push
from meshnode.fleet.store import StoreAccess, StoreError
from meshnode.logs import LogFormat
from meshnode.net.listener import H2Listener
from meshnode.node import Bindings, Node, NodeAddresses, preflight
from meshnode.policy import Address, PolicyError, PolicySet, load_policies
from meshnode.policy.advice import policy_warnings
from meshnode.policy.checks import store_url_problem
from meshnode.policy.units import Duration
from meshnode.reload import POLL_INTERVAL
from meshnode.worker_process import announce_ready, follow_parent, worker_count

DEFAULT_POLICIES = "policies"
# The cyclic collector's youngest generation is collected after this many container objects
# are allocated and not freed; CPython's 700 is crossed every few dozen requests by what a
# hundred requests in flight hold, and each collection walks every young object (and every
# tenth the older ones too): 8 % of a proxied request's CPU (19 µs, measured at -c10 -m10).
# What a request allocates is freed by reference counting; cycles (an exception's traceback,
# a replaced upstream's actors) are still collected, in batches this size.
GC_YOUNG_THRESHOLD = 10_000


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
@click.option(
    "--workers",
    default="1",
    show_default=True,
    help="Worker processes sharing the ports (SO_REUSEPORT), or 'auto' for one per core.",
)
@click.option("--worker", type=int, hidden=True, help="Run as worker N of a parent.")
@click.option("--bind-outbound", hidden=True, help="A worker's outbound address.")
@click.option("--bind-inbound", hidden=True, help="A worker's inbound address.")
def serve(
    directory: Path,
    log_level: str,
    log_format: LogFormat,
    watch: bool,
    workers: str,
    worker: int | None,
    bind_outbound: str | None,
    bind_inbound: str | None,
) -> None:
    """Run the node (SIGHUP reloads; SIGTERM or SIGINT drains, then exits)."""
    logs.configure(log_level, log_format)
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    policies = _checked(directory)
    try:
        count = worker_count(workers)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--workers") from None
    poll_interval = POLL_INTERVAL if watch else None
    try:
        if worker is not None and bind_outbound is not None:
            bindings = Bindings(
                outbound=Address.parse(bind_outbound),
                admin=Address("127.0.0.1", 0),
                inbound=Address.parse(bind_inbound) if bind_inbound else None,
                worker=worker,
            )
            trio.run(_run_worker, Node(policies, poll_interval=poll_interval, bindings=bindings))
        elif count > 1:
            passed = ["--log-level", log_level, "--log-format", log_format]
            if not watch:
                passed.append("--no-watch")
            # The parent's machinery (an HTTP client, a metrics parser) only where it runs.
            from meshnode.workers import Parent  # noqa: PLC0415

            trio.run(Parent(policies, count, passed).run)
        else:
            trio.run(Node(policies, poll_interval=poll_interval).run)
    except OSError as exc:
        click.echo(f"meshnode: cannot start: {exc}", err=True)
        raise SystemExit(1) from None


async def _run_worker(node: Node) -> None:
    async with trio.open_nursery() as nursery:

        async def serve_then_stop(*, task_status: trio.TaskStatus[NodeAddresses]) -> None:
            await node.run(task_status=task_status)
            nursery.cancel_scope.cancel()

        nursery.start_soon(follow_parent)
        addresses = await nursery.start(serve_then_stop)
        announce_ready(addresses.admin[0])


@main.group()
def policy() -> None:
    """Check policy files."""


@policy.command()
@click.argument(
    "directory", default=DEFAULT_POLICIES, type=click.Path(file_okay=False, path_type=Path)
)
@click.option("--strict", is_flag=True, help="Fail on warnings (the seed's anti-patterns) too.")
def validate(directory: Path, strict: bool) -> None:
    """Exit 0 if DIRECTORY's policies (and TLS material) are valid, else 1 with every error.
    Valid policies that do what the seed warns against are listed as warnings."""
    policies = _checked(directory, summary=True)
    warnings = policy_warnings(policies)
    for line in warnings:
        click.echo(line, err=True)
    if strict and warnings:
        click.echo(f"{len(warnings)} error(s) in {directory} (--strict)", err=True)
        raise SystemExit(1)
    names = ", ".join(sorted(policies.upstreams)) or "none"
    noted = f"; {len(warnings)} warning(s)" if warnings else ""
    click.echo(f"{directory}: valid (version {policies.version}; upstreams: {names}{noted})")


def store_options(command: Any) -> Any:
    """How to reach the fleet's store: TLS material and tokens from files, never values."""
    for name, help_text in (
        ("--token-file", "Consul: a file holding the ACL token."),
        ("--key-file", "etcd: the client certificate's key."),
        ("--cert-file", "etcd: a client certificate to present."),
        ("--ca-file", "Reach the store over https, verified against this CA."),
    ):
        command = click.option(name, type=click.Path(dir_okay=False), help=help_text)(command)
    return command


def _access(url: str, **files: str | None) -> StoreAccess:
    problem = store_url_problem(url)
    if problem is not None:
        raise click.BadParameter(problem)
    return StoreAccess(url, **files)


@policy.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--to", "url", required=True, help="etcd://host:port/prefix or consul://...")
@click.option("--canary", "canaries", multiple=True, help="A node to roll out to first.")
@click.option("--wait", default="60s", show_default=True, help="How long canaries may take.")
@store_options
def push(
    directory: Path,
    url: str,
    canaries: tuple[str, ...],
    wait: str,
    **files: str | None,
) -> None:
    """Validate DIRECTORY and push its upstream files to the fleet's store as one version
    (with --canary, to those nodes first; the rest only once they run it and are ready)."""
    _checked(directory, summary=True)
    try:
        seconds = float(Duration.parse(wait))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from exc
    try:
        trio.run(
            functools.partial(
                fleet_push,
                _access(url, **files),
                directory,
                canaries=canaries,
                wait=seconds,
                say=click.echo,
            )
        )
    except (StoreError, RolloutStopped) as exc:
        click.echo(f"push: {exc}", err=True)
        raise SystemExit(2) from exc


@main.group()
def fleet() -> None:
    """The fleet of nodes that share a policy store."""


@fleet.command("status")
@click.option("--store", "url", required=True, help="etcd://host:port/prefix or consul://...")
@click.option("--json", "as_json", is_flag=True, help="The registry as JSON.")
@store_options
def fleet_status_command(url: str, as_json: bool, **files: str | None) -> None:
    """Every registered node: its policy version, readiness and open breakers."""
    try:
        status = trio.run(fleet_status, _access(url, **files))
    except StoreError as exc:
        click.echo(f"fleet status: {exc}", err=True)
        raise SystemExit(2) from exc
    click.echo(json.dumps(status, indent=2, sort_keys=True) if as_json else status_table(status))


certs_dir_option = click.option(
    "--dir",
    "directory",
    default="certs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the CA and certificates are.",
)


@main.group()
def certs() -> None:
    """The mesh CA and node certificates (SPIFFE identities)."""


@certs.command("init")
@certs_dir_option
@click.option("--trust-domain", default="mesh.local", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA (every leaf must be reissued).")
def certs_init(directory: Path, trust_domain: str, force: bool) -> None:
    """Create the mesh CA: ca.pem and ca-key.pem (mode 0600)."""
    try:
        issued = certificates.init_ca(directory, trust_domain, force=force)
    except certificates.CertError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"CA for spiffe://{trust_domain}: {issued.cert} (key {issued.key}, mode 0600)")


@certs.command("issue")
@click.argument("name")
@certs_dir_option
@click.option("--days", default=certificates.LEAF_DAYS, show_default=True, type=int)
def certs_issue(name: str, directory: Path, days: int) -> None:
    """Issue NAME.pem and NAME-key.pem for service NAME, signed by the CA in --dir."""
    try:
        issued = certificates.issue(directory, name, days=days)
    except certificates.CertError as exc:
        raise click.ClickException(str(exc)) from None
    info = certificates.describe(issued.cert)
    click.echo(f"{info['identity']}: {issued.cert} (key {issued.key}), valid {days} days")


@certs.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def certs_inspect(file: Path, as_json: bool) -> None:
    """Subject, SANs, identity, issuer, validity and days left of a certificate."""
    try:
        info = certificates.describe(file)
    except certificates.CertError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key in (
        "subject",
        "identity",
        "sans",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "days_left",
    ):
        value = info[key]
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"{key.replace('_', ' ') + ':':12} {shown}")


def _checked(directory: Path, *, summary: bool = False) -> PolicySet:
    """The policies, with the TLS material they name checked; exit 1 listing every problem."""
    try:
        policies = load_policies(directory)
        problems = preflight(policies)
    except PolicyError as exc:
        problems = exc.lines
    if problems:
        for line in problems:
            click.echo(line, err=True)
        if summary:
            click.echo(f"{len(problems)} error(s) in {directory}", err=True)
        raise SystemExit(1)
    return policies


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

"""Instructions per proxied request, counted by callgrind: a figure that does not move with
the machine, for comparing two commits on the request path.

The request goes through ``Proxy`` (the proxy bench's full stack: ``FULL_STACK``) over
``LocalExchange``, the real upstream pool and an in-memory HTTP/2 upstream, all in one
process; with ``--h2-inbound`` it comes in as a caller's does instead, on an HTTP/2
connection (a client session over a memory stream, the same request each time: the
inbound header block's decoding and check are counted too).
Two runs under ``valgrind --tool=callgrind``, of N and 2N requests after the same
warm-up, differ by the cost of N requests alone.

    ./dev bench instructions                       # this checkout
    ./dev bench instructions --before /tmp/old     # and another (git worktree add /tmp/old REV)
    ./dev bench instructions --h2-inbound          # requests on an inbound HTTP/2 connection
    ./dev bench instructions --bytecodes           # Python bytecodes a request, by function

``--bytecodes`` counts, without valgrind, the Python bytecodes each function runs per
request (``sys.settrace`` opcode events; the same difference of N and 2N requests), in
seconds, and says where: the request path's own modules count nearly the same on every
run, the total within a fraction of a percent (trio batches its scheduling differently). Native
work (a C function, the kernel) is not in it, and one bytecode is not one cost, so it
guides a change on the request path; the instructions and the proxy bench judge it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import trio
import trio.testing
from common import FULL_STACK, write_policies

from meshnode.actors.group import UpstreamGroup
from meshnode.events import EventBus
from meshnode.net.h2.session import H2Session
from meshnode.net.listener import Peer
from meshnode.net.local import LocalExchange
from meshnode.net.pool import UpstreamPool
from meshnode.net.request_tasks import RequestTasks
from meshnode.net.stream import Stream
from meshnode.net.violations import ConnectionRules
from meshnode.policy.load import load_policies
from meshnode.policy.models import HedgePolicy, Limits, UpstreamPolicy
from meshnode.policy.units import Address, LatencyDelay
from meshnode.proxy.forward import Proxy
from meshnode.proxy.routing import RouteTable

WARM_UP = 100


def requests(count: int, *, hedged: bool = False, h2_inbound: bool = False) -> None:
    """Serve ``count`` requests after the warm-up (what callgrind counts); ``hedged``: under
    ``[hedge]`` too, with a delay no answer reaches (what hedging costs when none is sent);
    ``h2_inbound``: sent on an HTTP/2 connection to the proxy, not by ``LocalExchange``."""
    head = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"api")]

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def answer(stream: Stream) -> None:
                await stream.send_headers([(b":status", b"200")], end_stream=True)

            async def connect(address: Address, peer: str | None) -> trio.abc.Stream:
                client_end, server_end = trio.testing.memory_stream_pair()
                session = H2Session(
                    server_end,
                    client_side=False,
                    on_request=lambda stream: nursery.start_soon(answer, stream),
                    rules=ConnectionRules("bench", Limits()),
                )
                await nursery.start(session.run)
                return client_end

            policy = full_stack_policy()
            if hedged:
                policy = attrs.evolve(policy, hedge=HedgePolicy(delay=LatencyDelay(seconds=10.0)))
            group = UpstreamGroup(policy, EventBus())
            await nursery.start(group.run)
            pool = UpstreamPool(nursery, connector=connect)
            proxy = Proxy(RouteTable.build({"api": policy}), {"api": group}, pool)
            caller = await inbound(nursery, proxy) if h2_inbound else None
            for _ in range(WARM_UP + count):
                if caller is None:
                    exchange = LocalExchange(head, end_stream=True)
                    nursery.start_soon(proxy.handle, exchange.server, Peer(b"127.0.0.1"))
                    stream = exchange.client
                else:
                    stream = caller.open_stream(head, end_stream=True)
                await stream.receive()  # the head
                await stream.read_rest(keep=0)
            nursery.cancel_scope.cancel()

    trio.run(main)


def full_stack_policy() -> UpstreamPolicy:
    """The upstream ``api`` under the proxy bench's full stack (``FULL_STACK``), read from
    its file as a node reads it: every section the CPU figures are measured under."""
    with tempfile.TemporaryDirectory() as work:
        write_policies(Path(work), 1, 2, {"api": ["10.0.0.1:80"]}, FULL_STACK)
        return load_policies(work).upstreams["api"]


async def inbound(nursery: trio.Nursery, proxy: Proxy) -> H2Session:
    """A caller's HTTP/2 connection to ``proxy`` (served as a listener serves one): the
    caller's end."""
    client_end, server_end = trio.testing.memory_stream_pair()
    tasks = RequestTasks(nursery, proxy.handle, Peer(b"127.0.0.1"))
    served = H2Session(
        server_end,
        client_side=False,
        on_request=tasks.submit,
        rules=ConnectionRules("outbound", Limits()),
    )
    await nursery.start(served.run)
    caller = H2Session(client_end, client_side=True)
    await nursery.start(caller.run)
    return caller


def counted(source: Path, count: int, options: tuple[str, ...] = ()) -> int:
    """Instructions of a whole run serving ``count`` requests with ``source``'s meshnode."""
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/out"),
                *(sys.executable, __file__, "--serve", str(count), *options),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(source)},
            cwd=work,
            check=True,
            timeout=1800,
        )
    found = re.search(r"Collected : (\d+)", result.stderr)
    assert found is not None, result.stderr
    return int(found.group(1))


def per_request(source: Path, count: int, options: tuple[str, ...] = ()) -> float:
    return (counted(source, 2 * count, options) - counted(source, count, options)) / count


def bytecodes(count: int, *, h2_inbound: bool = False) -> collections.Counter[str]:
    """Bytecodes a request runs in each function (``module:qualified name``): the counts of
    2 * ``count`` requests less those of ``count``, divided by ``count``."""

    def counted_run(requests_served: int) -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()

        def trace(frame: FrameType, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            if event == "opcode":
                code = frame.f_code
                counts[f"{frame.f_globals.get('__name__')}:{code.co_qualname}"] += 1
            return trace

        sys.settrace(trace)
        try:
            requests(requests_served, h2_inbound=h2_inbound)
        finally:
            sys.settrace(None)
        return counts

    counted_run(1)  # a process's first traced run counts short under CPython 3.12
    once, twice = counted_run(count), counted_run(2 * count)
    twice.subtract(once)
    return collections.Counter({name: n / count for name, n in twice.items() if n > 0})


def print_bytecodes(per_function: collections.Counter[str], shown: int = 30) -> None:
    """The total, each package's share, and the functions of meshnode that run the most."""
    total = sum(per_function.values())
    print(f"{total:,.0f} bytecodes per request")
    packages: collections.Counter[str] = collections.Counter()
    for name, n in per_function.items():
        parts = name.partition(":")[0].split(".")
        packages[".".join(parts[:2]) if parts[0] == "meshnode" else parts[0]] += n
    for package, n in packages.most_common(12):
        print(f"  {n:8,.0f}  {package}")
    print("meshnode's functions that run the most:")
    ours = [(name, n) for name, n in per_function.most_common() if name.startswith("meshnode.")]
    for name, n in ours[:shown]:
        print(f"  {n:8,.0f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--before", type=Path, help="another checkout (git worktree add DIR REV)")
    parser.add_argument(
        "--hedge", action="store_true", help="also count requests under [hedge] (none sent)"
    )
    parser.add_argument(
        "--h2-inbound",
        action="store_true",
        help="requests on an inbound HTTP/2 connection, not through LocalExchange",
    )
    parser.add_argument(
        "--bytecodes",
        action="store_true",
        help="count Python bytecodes per request by function instead (no valgrind)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the counted run itself
    args = parser.parse_args()
    if args.serve is not None:
        requests(args.serve, hedged=args.hedge, h2_inbound=args.h2_inbound)
        return
    if args.bytecodes:
        print_bytecodes(bytecodes(args.requests // 4, h2_inbound=args.h2_inbound))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    here = Path(__file__).resolve().parents[1]
    inbound_option = ("--h2-inbound",) if args.h2_inbound else ()
    now = per_request(here, args.requests, inbound_option)
    print(f"this checkout: {now:,.0f} instructions per request")
    if args.hedge:
        hedged = per_request(here, args.requests, ("--hedge", *inbound_option))
        print(f"under [hedge]: {hedged:,.0f} instructions per request ({hedged / now - 1:+.2%})")
    if args.before is not None:
        before = per_request(args.before.resolve(), args.requests, inbound_option)
        print(f"{args.before}: {before:,.0f} instructions per request ({now / before - 1:+.2%})")


if __name__ == "__main__":
    main()

"""The least a proxy built on meshnode's connections does: a reference point for the
request path's cost.

A listener whose every request goes, as it came, to one upstream: meshnode's own
sessions (``net/h2/session.py``), upstream pool, streams and body relay, a task per
request (``RequestTasks``) and busy polling at its default budget, as the node has them;
none of the request path (no routing, request record, forwarded headers, tries,
resilience, statistics or access log), and no error handling: a bench tool, not a proxy.
``./dev bench proxy`` runs it beside the node at the 1 KiB GETs (``bare-relay``): the
node's CPU per request less this one's is what the request path and the resilience stack
cost; the rest is HTTP/2, trio and the kernel.

    .venv/bin/python bench/bare_relay.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import sys

import trio

from meshnode.net.busy_poll import BusyPoll
from meshnode.net.h2.session import H2Session
from meshnode.net.pool import UpstreamPool
from meshnode.net.request_tasks import RequestTasks
from meshnode.net.stream import ResponseHead, Stream
from meshnode.policy.models import NodeSection
from meshnode.policy.units import Address
from meshnode.proxy.relay import relay_body


async def main(port: int, upstream: Address) -> None:
    BusyPoll().configure(NodeSection(name="bare-relay").busy_poll)  # the node's default
    async with trio.open_nursery() as nursery:
        pool = UpstreamPool(nursery)

        async def relay(stream: Stream, _: None) -> None:
            assert stream.headers is not None
            sent = await pool.open_stream(upstream, stream.headers, end_stream=stream.consume_end())
            head = await sent.receive()
            assert isinstance(head, ResponseHead)
            no_body = sent.consume_end()
            await stream.send_headers(head.headers, end_stream=no_body)
            if not no_body:
                await relay_body(sent, stream)

        async def serve(transport: trio.SocketStream) -> None:
            async with trio.open_nursery() as requests:
                tasks = RequestTasks(requests, relay, None)
                await H2Session(transport, client_side=False, on_request=tasks.submit).run()
                tasks.close()

        await trio.serve_tcp(serve, port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), Address("127.0.0.1", int(sys.argv[2])))

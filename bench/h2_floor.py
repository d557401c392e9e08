"""The floor: the h2 library's own work for one proxied request, no sockets, no meshnode.

A proxy's h2 work per request is four steps on two connections: receive the
client's request headers, send them upstream, receive the upstream's response
headers and 1 KiB body, send those back to the client. This times exactly
those four (the peers' halves are done outside the timed sections), with the
same h2 settings meshnode uses (header_encoding None, outbound validation
and normalization off), so meshnode's CPU per request can be read as a multiple of this floor.

    .venv/bin/python bench/h2_floor.py [--requests 20000]
    .venv/bin/python bench/h2_floor.py --meshnode   # the same steps on meshnode's h2 layer

``--meshnode`` takes the same four steps on meshnode's own codec (``net/h2/codec.py``,
with meshnode's settings and HPACK coders) in place of h2 on the proxy's two connections:
what HTTP/2 itself costs a request in meshnode.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from meshnode.net.h2.codec import Codec
from meshnode.policy.models import Limits

BODY = b"k" * 1024
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":path", b"/1k"),
    (b":authority", b"web"),
    (b"user-agent", b"h2load"),
]
RESPONSE = [(b":status", b"200"), (b"content-length", b"1024"), (b"server", b"nghttpd")]


def _pair(meshnode_side: str, layer: bool = False) -> tuple[Any, Any]:
    """A client and a server connection; the ``meshnode_side`` one configured as meshnode's
    sessions configured h2 (no outbound validation; on the server side, no inbound either),
    or with ``layer`` meshnode's codec."""
    client = _connection(
        layer and meshnode_side == "client",
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=meshnode_side != "client",
        normalize_outbound_headers=meshnode_side != "client",
    )
    server = _connection(
        layer and meshnode_side == "server",
        client_side=False,
        header_encoding=None,
        validate_outbound_headers=meshnode_side != "server",
        normalize_outbound_headers=meshnode_side != "server",
        validate_inbound_headers=meshnode_side != "server",
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _connection(layer: bool, **options: Any) -> Any:
    if not layer:
        return h2.connection.H2Connection(h2.config.H2Configuration(**options))
    limits = Limits()
    return Codec(
        client_side=options["client_side"],
        max_concurrent_streams=limits.max_concurrent_streams,
        initial_window_size=limits.stream_window,
        max_header_list_size=limits.max_header_list_size,
        max_frame_size=limits.max_frame_size,
        enable_connect_protocol=not options["client_side"],
    )


def floor_us(requests: int = 20000, *, layer: bool = False) -> float:
    """Microseconds of h2 work per proxied 1 KiB GET (the cheapest of five batches, as the
    proxy's own figure is the cheapest of its rounds); ``layer``: on meshnode's codec."""
    batches = []
    for _ in range(5):
        app, proxy_in = _pair("server", layer)  # the client and meshnode's downstream side
        proxy_out, origin = _pair("client", layer)  # meshnode's upstream side and the origin
        spent = 0.0
        for _ in range(requests // 5):
            stream = app.get_next_available_stream_id()
            app.send_headers(stream, REQUEST, end_stream=True)
            wire = app.data_to_send()

            started = time.perf_counter()
            events = proxy_in.receive_data(wire)  # 1: receive the request
            upstream = proxy_out.get_next_available_stream_id()
            proxy_out.send_headers(upstream, events[0].headers, end_stream=True)  # 2: send it on
            wire = proxy_out.data_to_send()
            spent += time.perf_counter() - started

            origin.receive_data(wire)
            origin.send_headers(upstream, RESPONSE)
            origin.send_data(upstream, BODY, end_stream=True)
            wire = origin.data_to_send()

            started = time.perf_counter()
            answer = proxy_out.receive_data(wire)  # 3: receive the response and body
            head = next(e for e in answer if type(e).__name__ == "ResponseReceived")
            data = next(e for e in answer if type(e).__name__ == "DataReceived")
            proxy_out.acknowledge_received_data(data.flow_controlled_length, upstream)
            proxy_in.send_headers(stream, head.headers, end_stream=False)  # 4: send them back
            proxy_in.send_data(stream, data.data, end_stream=True)
            wire = proxy_in.data_to_send()
            spent += time.perf_counter() - started

            for event in app.receive_data(wire):
                if isinstance(event, h2.events.DataReceived):
                    app.acknowledge_received_data(event.flow_controlled_length, stream)
            proxy_in.receive_data(app.data_to_send())
            origin.receive_data(proxy_out.data_to_send())
            proxy_out.receive_data(origin.data_to_send())
        batches.append(spent / (requests // 5) * 1e6)
    return min(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--meshnode", action="store_true", help="on meshnode's codec")
    args = parser.parse_args()
    if args.meshnode:
        layer = floor_us(args.requests, layer=True)
        print(f"meshnode's codec per proxied 1 KiB GET: {layer:.1f} µs")
    else:
        print(f"h2's own work per proxied 1 KiB GET: {floor_us(args.requests):.1f} µs")


if __name__ == "__main__":
    main()

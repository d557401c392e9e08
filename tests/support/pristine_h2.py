"""A connection fed a peer's bytes, described in a form two processes can compare; run as
a script, the same with h2 as shipped, in a process of its own.

The speedups' differential tests compare meshnode's ``Connection`` with h2's own path;
in the test process both run on h2 patched process-wide, so a patch that changed h2's
behaviour would change both sides alike. ``python -m tests.support.pristine_h2`` reads
cases (JSON on stdin) and answers what unpatched h2 does with each. It imports nothing
of meshnode's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import h2.config
import h2.connection
import h2.exceptions

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def prepared(ours: h2.connection.H2Connection) -> h2.connection.H2Connection:
    """``ours`` past both sides' SETTINGS (with plain h2 as the peer); a client with
    requests open on streams 1, 3 and 5."""
    client_side = ours.config.client_side
    peer = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=not client_side, header_encoding=None)
    )
    ours.initiate_connection()
    peer.initiate_connection()
    ours.receive_data(peer.data_to_send())
    peer.receive_data(ours.data_to_send())
    ours.receive_data(peer.data_to_send())
    if client_side:
        for stream_id in (1, 3, 5):
            ours.send_headers(stream_id, REQUEST, end_stream=stream_id != 3)
    ours.data_to_send()
    return ours


def described(ours: h2.connection.H2Connection, wire: bytes, cut: int) -> Any:
    """``wire`` received in two reads (cut at ``cut``): the events or error of each, the
    bytes to send, the streams' states and windows, the connection's state."""
    outcomes: list[Any] = []
    for chunk in (wire[:cut], wire[cut:]):
        try:
            events = ours.receive_data(chunk)
        except h2.exceptions.ProtocolError as error:
            outcomes.append([type(error).__name__, getattr(error, "error_code", None)])
            break
        outcomes.append(
            [[type(e).__name__, {k: repr(v) for k, v in vars(e).items()}] for e in events]
        )
    streams = {
        str(i): [repr(s.state_machine.state), s.inbound_flow_control_window]
        for i, s in sorted(ours.streams.items())
    }
    state = [repr(ours.state_machine.state), ours.highest_inbound_stream_id]
    window = ours.inbound_flow_control_window
    return [outcomes, ours.data_to_send().hex(), streams, state, window]


def plain(client_side: bool) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    return h2.connection.H2Connection(config)


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    answers = [
        described(prepared(plain(case["client_side"])), bytes.fromhex(case["wire"]), case["cut"])
        for case in cases
    ]
    json.dump(answers, sys.stdout)

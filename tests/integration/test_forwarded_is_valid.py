"""Differential: whatever meshnode forwards, a strict HTTP/2 server accepts.

One caller's bad request must never cost the other callers their shared upstream
connection: anything the node forwards that a conforming server treats as a connection
error would. Hypothesis builds requests from valid and invalid fields (pseudo-headers
missing, repeated, misplaced or malformed; connection-specific fields, ``te``, ``host``;
names and values with the characters HTTP forbids), and a bare h2 client sends each as
it is, unchecked. Each is either refused by the node itself (a 4xx, or a reset) or
answered by the strict server, the installed h2 with all its checks, in a process of its
own: it counts every request it had to refuse, and it must count none.
"""

from __future__ import annotations

from collections.abc import Iterator

import hpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.net.h2.framing import DATA, END_STREAM, HEADERS, RST_STREAM
from meshnode.policy.units import Address
from tests.conftest import NodeProcess, upstream_toml, write_policies
from tests.support.attacker import HELLO, SETTINGS_ACK, parse_frames, request_frame
from tests.support.upstream_processes import PythonUpstream

Field = tuple[bytes, bytes]

METHODS = [b"GET", b"POST", b"HEAD", b"DELETE", b"get", b"GE T", b"", b"CONNECT", b"OPTIONS"]
SCHEMES = [b"http", b"https", b"ftp", b"", b"HTTP"]
PATHS = [b"/", b"/a/b?c=d", b"/%20", b"a", b"*", b"/a b", b"/a#b", b"", b"/\x7f", b"//x"]
AUTHORITIES = [b"api", b"api:80", b"user@api", b"api example", b"", b"api\x00"]
NAMES = [
    b"accept",
    b"x-trace",
    b"cookie",
    b"content-length",
    b"host",
    b"te",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"X-Upper",
    b"x_under",
    b"x bad",
    b"",
    b":method",
    b":status",
    b":bogus",
    b"x-\x00",
    b"x-\xff",
]
VALUES = [
    b"1",
    b"trailers",
    b"gzip",
    b"api",
    b"other",
    b"",
    b" lead",
    b"trail ",
    b"a\tb",
    b"a\rb",
    b"a\nb",
    b"a\x00b",
    b"a\x7fb",
    b"caf\xc3\xa9",
    b"close",
    b"-1",
    b"5",
]

PSEUDO = st.sampled_from(
    [
        *[(b":method", m) for m in METHODS],
        *[(b":scheme", s) for s in SCHEMES],
        *[(b":path", p) for p in PATHS],
        *[(b":authority", a) for a in AUTHORITIES],
    ]
)
# Fields a request may carry, with values that may or may not suit them, and now and then
# any name with any value: most requests stay routable, and reach the strict server.
PLAIN_FIELD = st.sampled_from(
    [
        (b"accept", b"*/*"),
        (b"x-trace", b"a\tb"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"host", b"api"),
        (b"te", b"trailers"),
        (b"content-length", b"0"),
        (b"user-agent", b"caf\xc3\xa9"),
        (b"x-empty", b""),
    ]
)
FIELD = st.one_of(
    PLAIN_FIELD, PLAIN_FIELD, st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES))
)


@st.composite
def requests(draw: st.DrawFn) -> list[Field]:
    """Mostly a routable GET with a few odd fields; often worse."""
    base: list[Field] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"api"),
    ]
    if draw(st.integers(0, 3)) == 0:  # break the pseudo-headers too
        base = draw(st.lists(st.sampled_from(base) | PSEUDO, max_size=6))
    fields = draw(st.lists(FIELD, min_size=0 if base else 1, max_size=4))
    if draw(st.integers(0, 3)) == 0:  # pseudo-headers among the fields
        return draw(st.permutations(base + fields))
    return base + fields


async def send(address: Address, headers: list[Field]) -> tuple[str, dict[bytes, bytes]]:
    """Send ``headers`` as they are, in raw frames (no client library would send most of
    them); ("answered", head), ("reset", {}) or ("closed", {}). An answer's frames are
    read to its end, and an answer to HEAD must have no body."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    received = bytearray()
    head: dict[bytes, bytes] | None = None
    async with stream:
        try:
            await stream.send_all(HELLO + SETTINGS_ACK + request_frame(1, headers))
            with trio.fail_after(10):
                while data := await stream.receive_some(65536):
                    received += data
                    for frame in parse_frames(bytes(received)):
                        if frame.stream_id != 1:
                            continue
                        if frame.type == RST_STREAM:
                            return "reset", {}
                        if frame.type == HEADERS and head is None:
                            head = dict(hpack.Decoder().decode(frame.payload, raw=True))
                        elif frame.type == DATA and frame.payload:
                            method = next((v for n, v in headers if n == b":method"), None)
                            assert method != b"HEAD", "an answer to HEAD with a body"
                        if frame.flags & END_STREAM and head is not None:
                            return "answered", head
        except trio.BrokenResourceError:
            pass  # the node ended the connection without reading all of it
    return "closed", {}


@pytest.fixture
def strict() -> Iterator[PythonUpstream]:
    upstream = PythonUpstream("tests.support.strict_upstream")
    yield upstream
    upstream.stop()


@pytest.fixture
def node(tmp_path, strict: PythonUpstream) -> Iterator[NodeProcess]:
    process = NodeProcess(write_policies(tmp_path, {"api": upstream_toml("api", strict.address)}))
    yield process
    process.stop()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(headers=requests())
def test_what_the_node_forwards_a_strict_server_accepts(
    node: NodeProcess, strict: PythonUpstream, headers: list[Field]
) -> None:
    outcome, head = trio.run(send, Address.parse(node.outbound), headers)
    if outcome == "answered" and head.get(b"x-strict") != b"accepted":
        status = int(head[b":status"])
        assert 400 <= status < 500, (headers, head)  # the node refused it itself
    counted = strict.counts()
    assert counted.get("connection_errors", 0) == 0, (headers, counted)
    assert counted.get("stream_errors", 0) == 0, (headers, counted)


def test_the_strict_server_does_refuse(strict: PythonUpstream) -> None:
    """The judge is strict: a request with a connection-specific field sent to it
    straight is a connection error there."""
    address = Address.parse(strict.address)
    bad = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    assert trio.run(send, address, [*bad, (b"connection", b"close")])[0] == "closed"
    assert strict.counts()["connection_errors"] == 1

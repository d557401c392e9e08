"""An upstream in its own process that recycles connections in one scripted way.

Run as ``python -m tests.support.scripted_upstream MODE [--every N]``; it prints
``listening 127.0.0.1:PORT`` once it serves. It speaks HTTP/2 with the installed h2,
an implementation apart from meshnode's codec, or HTTP/1.1 with
plain sockets, one thread per connection. Modes:

- ``refuse``: every Nth stream is answered RST_STREAM REFUSED_STREAM, unprocessed; a
  request (by its ``x-request-id``) at most once, so that its resend is answered, unless
  ``--always``.
- ``refuse-late``: the same once the stream's whole request body has arrived.
- ``lower-streams``: after N requests it lowers SETTINGS_MAX_CONCURRENT_STREAMS to 1,
  on the connection that took the Nth and in the first SETTINGS of every later one, and
  refuses (REFUSED_STREAM, RFC 9113 5.1.2) every stream past that limit from the moment
  it sent the new value, before the client could have seen it.
- ``stale-h2``: each connection answers N requests and closes, without GOAWAY, when the
  next one arrives: the HTTP/2 form of the stale keep-alive race below.
- ``double-goaway``: after N requests a connection shuts down as nghttp2 servers do:
  GOAWAY with the highest possible ``last_stream_id``, then one with the last stream it
  took; it ignores streams past that, finishes the rest, and closes.
- ``answer-after-reset``: every Nth request is held until the client resets its stream,
  and then answered all the same (HEADERS and DATA written past h2, which knows the stream
  is closed): an answer that crossed the client's RST_STREAM on the wire, made to happen
  every time. Counted as ``answered-after-reset``.
- ``shrink-window``: as soon as a request body's first bytes arrive, it lowers
  SETTINGS_INITIAL_WINDOW_SIZE to 1, which takes that stream's send window below zero
  (RFC 9113 6.9.2; counted ``shrink-acked`` once the client acknowledged it), and opens it
  again only when a ``/_reopen`` request comes on the same connection. A DATA frame sent
  meanwhile, even an empty one, is h2's flow-control error: counted
  ``flow-control-errors``, and the connection ends.
- ``bad-head``: a request for ``/bad`` is answered with a head HTTP/2 calls malformed (a
  connection-specific ``connection: keep-alive`` field, written with h2's outbound checks
  off), counted ``bad-heads``: the same head every time, so the same header block once
  h2's encoder has indexed its fields. Other paths are answered as usual.
- ``stale-http1``: HTTP/1.1 keep-alive; a connection answers its first request and
  closes when the next one arrives, unanswered: the race of a server closing an idle
  connection as a request is on its way, made to happen every time.

``GET /_counts`` answers, as JSON, how many requests were processed (answered) by
method; that request itself is not counted. ``/digest`` answers the SHA-256 of the
request body, anything else ``ok``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import socket
import threading
from collections import Counter

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame

counts: Counter[str] = Counter()
counts_lock = threading.Lock()
refused: set[bytes] = set()  # the request ids refused once
always = False  # --always: refuse a request every time, not once
lowered = threading.Event()  # lower-streams: the limit is 1 from now on
served = itertools.count(1)  # lower-streams: requests received on any connection


def refuse_once(head: dict[bytes, bytes]) -> bool:
    """Whether to refuse this request: True once per request id (or every time); never
    the counts' own."""
    if head.get(b":path") == b"/_counts":
        return False
    request_id = head.get(b"x-request-id", b"")
    with counts_lock:
        if request_id in refused and not always:
            return False
        refused.add(request_id)
        counts["refused"] += 1
        return True


def answer_of(method: str, path: str, body: bytes = b"") -> bytes:
    """The answer to a processed request (counted), or the counts."""
    if path == "/_counts":
        with counts_lock:
            return json.dumps(counts).encode()
    with counts_lock:
        counts[method] += 1
    return hashlib.sha256(body).hexdigest().encode() if path == "/digest" else b"ok"


def serve_h2(client: socket.socket, mode: str, every: int) -> None:
    checked = mode != "bad-head"  # h2 would refuse to send the malformed head
    config = h2.config.H2Configuration(
        client_side=False, validate_outbound_headers=checked, normalize_outbound_headers=checked
    )
    conn = h2.connection.H2Connection(config)
    limit: int | None = None  # streams allowed at once, once lowered
    if lowered.is_set():
        limit = 1
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
        )
    conn.initiate_connection()
    client.sendall(conn.data_to_send())
    requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
    held: set[int] = set()  # answer-after-reset: streams answered once the client resets them
    seen = 0
    last_taken: int | None = None  # double-goaway: the last stream its second GOAWAY names
    shrunk: int | None = None  # shrink-window: the stream whose window went below zero
    while True:
        data = client.recv(65536)
        if not data:
            return
        ended: list[tuple[int, dict[bytes, bytes], bytearray]] = []  # answered after the read
        goaways = b""
        late = b""  # answer-after-reset: frames written past h2
        try:
            events = conn.receive_data(data)
        except h2.exceptions.FlowControlError:
            with counts_lock:
                counts["flow-control-errors"] += 1
            client.sendall(conn.data_to_send())
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if last_taken is not None and event.stream_id > last_taken:
                    continue  # past the GOAWAY: never processed
                seen = next(served) if mode == "lower-streams" else seen + 1
                if mode == "stale-h2" and seen > every:
                    return  # closed under it, without a word
                head = dict(event.headers)
                refusing = mode == "refuse" and seen % every == 0 and refuse_once(head)
                over_limit = limit is not None and len(requests) + len(ended) >= limit
                if over_limit:
                    with counts_lock:
                        counts["refused"] += 1
                if refusing or over_limit:
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                else:
                    requests[event.stream_id] = (head, bytearray())
                counted = head.get(b":path") != b"/_counts"
                if mode == "answer-after-reset" and seen % every == 0 and counted:
                    held.add(event.stream_id)
                if mode == "double-goaway" and seen == every:
                    goaways = goaway_frame(2**31 - 1)
                if mode == "shrink-window" and head.get(b":path") == b"/_reopen":
                    conn.increment_flow_control_window(65536, stream_id=shrunk)
                if mode == "lower-streams" and seen == every:
                    lowered.set()
                    limit = 1
                    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if mode == "shrink-window" and shrunk is None:
                    shrunk = event.stream_id
                    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1})
                if event.stream_id in requests:
                    requests[event.stream_id][1].extend(event.data)
            elif isinstance(event, h2.events.SettingsAcknowledged) and shrunk is not None:
                with counts_lock:
                    counts["shrink-acked"] += 1
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                head, received = requests.pop(event.stream_id)
                if event.stream_id in held:
                    continue
                if mode == "refuse-late" and seen % every == 0 and refuse_once(head):
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                else:
                    ended.append((event.stream_id, head, received))
            elif isinstance(event, h2.events.StreamReset):
                requests.pop(event.stream_id, None)
                if event.stream_id in held:
                    held.discard(event.stream_id)
                    late += late_answer(event.stream_id)
                    with counts_lock:
                        counts["answered-after-reset"] += 1
        if late:
            client.sendall(late)
        if goaways:
            last_taken = conn.highest_inbound_stream_id
            goaways += goaway_frame(last_taken)
            client.sendall(goaways)
        for stream_id, head, received in ended:
            method, path = head[b":method"].decode(), head[b":path"].decode()
            body = answer_of(method, path, bytes(received))
            answer = [(b":status", b"200"), (b"content-length", str(len(body)).encode())]
            if mode == "bad-head" and path == "/bad":
                answer.append((b"connection", b"keep-alive"))
                with counts_lock:
                    counts["bad-heads"] += 1
            conn.send_headers(stream_id, answer)
            conn.send_data(stream_id, body, end_stream=True)
        client.sendall(conn.data_to_send())
        if last_taken is not None and not requests:
            linger(client)  # shut down: what it took is answered
            return


def linger(client: socket.socket) -> None:
    """Close as servers do: half-close, then read until the client closes (a close with
    unread bytes would reset the connection, and the answers sent with it)."""
    client.shutdown(socket.SHUT_WR)
    client.settimeout(10)
    while client.recv(65536):
        pass


def late_answer(stream_id: int) -> bytes:
    """HEADERS (``:status: 200``, HPACK's static entry 8: no table to keep in step) and a
    DATA frame that ends the stream, for a stream h2 considers closed."""
    head = HeadersFrame(stream_id, data=b"\x88", flags=["END_HEADERS"])
    body = DataFrame(stream_id, data=b"late", flags=["END_STREAM"])
    return bytes(head.serialize()) + bytes(body.serialize())


def goaway_frame(last_stream_id: int) -> bytes:
    """A GOAWAY written past h2, which would close the connection with it."""
    return bytes(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize())


def serve_stale_http1(client: socket.socket) -> None:
    """Answer one request (a body announced by content-length is read), keep the
    connection alive, and close it when the next request arrives."""
    pending = b""
    while b"\r\n\r\n" not in pending:
        data = client.recv(65536)
        if not data:
            return
        pending += data
    head, _, body = pending.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = next(
        (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")),
        0,
    )
    while len(body) < length:
        body += client.recv(65536)
    answer = answer_of(method, path)
    client.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
    client.recv(65536)  # the next request: closed under it


def handle(client: socket.socket, mode: str, every: int) -> None:
    with client:
        try:
            if mode == "stale-http1":
                serve_stale_http1(client)
            else:
                serve_h2(client, mode, every)
        except OSError:
            return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode",
        choices=[
            "refuse",
            "refuse-late",
            "lower-streams",
            "stale-h2",
            "double-goaway",
            "answer-after-reset",
            "shrink-window",
            "bad-head",
            "stale-http1",
        ],
    )
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--always", action="store_true")
    options = parser.parse_args()
    global always  # noqa: PLW0603 - set once, before any connection
    always = options.always
    listener = socket.create_server(("127.0.0.1", 0))
    print("listening", f"127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(
            target=handle, args=(client, options.mode, options.every), daemon=True
        ).start()


if __name__ == "__main__":
    main()

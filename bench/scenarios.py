"""The proxy benchmark's scenarios that need more than nghttpd and h2load: a gRPC server,
an mTLS hop (two meshnodes, or HAProxy twice), and clients that never read."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from common import free_port, run_haproxy, start_meshnode, wait_for_port, write_policies
from h2.connection import H2Connection

from meshnode import certs

# One gRPC unary call: a 5-byte message, length-prefixed (gRPC's framing).
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"
GRPC_PATH = "/bench.Echo/Unary"
STALLED_CLIENTS = 50


def start_grpc_server() -> tuple[grpc.Server, int]:
    """A grpcio server answering ``GRPC_PATH`` with the request message."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Unary": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def grpc_request_file(work: Path) -> Path:
    path = work / "grpc-message.bin"
    path.write_bytes(GRPC_MESSAGE)
    return path


def start_mtls_pair(work: Path, upstream_port: int) -> tuple[list[subprocess.Popen[bytes]], int]:
    """h2load -> node A (outbound) -> mTLS -> node B (inbound) -> nghttpd; returns both nodes
    and A's port."""
    pki = work / "pki"
    certs.init_ca(pki, "mesh.local")
    for name in ("node-a", "web"):
        certs.issue(pki, name)
    b_dir, a_dir = work / "mtls-b", work / "mtls-a"
    b_inbound, b_out, b_admin = free_port(), free_port(), free_port()
    write_policies(b_dir, b_out, b_admin, {})
    with (b_dir / "node.toml").open("a") as node:
        node.write(
            f'[listeners.inbound]\naddress = "127.0.0.1:{b_inbound}"\n'
            f'local = "127.0.0.1:{upstream_port}"\nallow = ["spiffe://mesh.local/service/node-a"]\n'
            f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/web.pem"\nkey = "{pki}/web-key.pem"\n'
        )
    a_out, a_admin = free_port(), free_port()
    write_policies(a_dir, a_out, a_admin, {})
    with (a_dir / "node.toml").open("a") as node:
        node.write(
            f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/node-a.pem"\nkey = "{pki}/node-a-key.pem"\n'
        )
    (a_dir / "web.toml").write_text(
        '[upstream]\nname = "web"\ntls = "mesh"\n'
        f'[discovery]\nendpoints = ["127.0.0.1:{b_inbound}"]\n'
    )
    node_b = start_meshnode(b_dir, b_out)
    wait_for_port(b_inbound)
    return [start_meshnode(a_dir, a_out), node_b], a_out


def start_haproxy_mtls(work: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """The same two hops with one HAProxy: a cleartext HTTP/2 frontend, a backend that
    presents a client certificate to a second frontend that requires one, then nghttpd."""
    pki = work / "pki"
    for name in ("node-a", "web"):
        (work / f"{name}-bundle.pem").write_bytes(
            (pki / f"{name}.pem").read_bytes() + (pki / f"{name}-key.pem").read_bytes()
        )
    front, inner = free_port(), free_port()
    config = work / "haproxy-mtls.cfg"
    config.write_text(
        "global\n  nbthread 1\n  maxconn 4000\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        f"frontend outbound\n  bind 127.0.0.1:{front} proto h2\n  default_backend mesh\n"
        f"backend mesh\n  server b 127.0.0.1:{inner} ssl crt {work}/node-a-bundle.pem "
        f"ca-file {pki}/ca.pem verify required alpn h2\n"
        f"frontend inbound\n  bind 127.0.0.1:{inner} ssl crt {work}/web-bundle.pem "
        f"ca-file {pki}/ca.pem verify required alpn h2\n  default_backend local\n"
        f"backend local\n  server nghttpd 127.0.0.1:{upstream_port} proto h2\n"
    )
    return run_haproxy(config, front), front


def stalled_downloads(
    port: int, authority: str, path: str, rss: Callable[[], int]
) -> tuple[int, int]:
    """RSS (``rss()``, KiB) before, and while ``STALLED_CLIENTS`` clients each ask for ``path``
    and never read a byte of it (their windows and socket buffers fill, then nothing)."""
    before = rss()
    stalled = []
    try:
        for _ in range(STALLED_CLIENTS):
            conn = H2Connection()
            conn.initiate_connection()
            conn.send_headers(
                1,
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", authority),
                    (":path", path),
                ],
                end_stream=True,
            )
            client = socket.create_connection(("127.0.0.1", port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.sendall(conn.data_to_send())
            stalled.append(client)
        time.sleep(5)
        return before, rss()
    finally:
        for client in stalled:
            client.close()


if __name__ == "__main__":
    sys.exit("imported by proxy_bench.py")

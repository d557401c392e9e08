"""mTLS between meshnodes with real certificates: identities, rejections, rotation, certs CLI.

Every rejection is observed by reading: with TLS 1.3 a client whose certificate
is refused sees its handshake succeed and only then the connection end.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import trio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hyperframe.frame import PingFrame

from meshnode import certs
from meshnode.events import Event
from meshnode.net.tls import TLSRejected, TLSRotated
from meshnode.node import Node, NodeAddresses
from meshnode.policy import Address, load_policies
from tests.conftest import require
from tests.support.attacker import attack
from tests.support.client import admin, fetch
from tests.support.commands import meshnode
from tests.support.grpc_server import grpc_server, unary
from tests.support.mtls import TRUST, inbound_section, mesh_upstream, node_toml
from tests.support.rawh2 import RawH2Server, respond


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    certs.init_ca(directory, TRUST)
    for name in ("node-a", "node-b", "node-c", "intruder"):
        certs.issue(directory, name)
    return directory


Start = Callable[[Path], Awaitable[tuple[Node, NodeAddresses]]]


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    async def started(directory: Path) -> tuple[Node, NodeAddresses]:
        node = Node(load_policies(directory), poll_interval=None)
        addresses = await nursery.start(functools.partial(node.run, handle_signals=False))
        return node, addresses

    return started


@pytest.fixture
async def chain(
    tmp_path, pki, start, hypercorn_upstream
) -> tuple[Node, NodeAddresses, Node, NodeAddresses]:
    """app -> node A outbound -> mTLS -> node B inbound -> the local service (Hypercorn)."""
    node_toml(tmp_path / "b", "node-b", pki, inbound=inbound_section(hypercorn_upstream, "node-a"))
    node_b, b = await start(tmp_path / "b")
    node_toml(tmp_path / "a", "node-a", pki)
    mesh_upstream(tmp_path / "a", "node-b", b.inbound[0])
    node_a, a = await start(tmp_path / "a")
    return node_a, a, node_b, b


async def test_a_chain_with_curl_passes_the_verified_identity(chain) -> None:
    _, a, _, _ = chain
    status, _, body = await fetch(
        a.outbound[0], "node-b", "/headers", "-H", "x-meshnode-peer-identity: spiffe://forged"
    )
    assert status == 200
    seen = json.loads(body)
    assert seen["x-meshnode-peer-identity"] == f"spiffe://{TRUST}/service/node-a"  # never forged


async def test_a_chain_with_grpc(tmp_path, pki, start) -> None:
    handler = unary(lambda request, context: request[::-1])
    with grpc_server("test.Echo", {"Reverse": handler}, workers=2) as address:
        node_toml(tmp_path / "b", "node-b", pki, inbound=inbound_section(address, "node-a"))
        _, b = await start(tmp_path / "b")
        node_toml(tmp_path / "a", "node-a", pki)
        mesh_upstream(tmp_path / "a", "node-b", b.inbound[0])
        _, a = await start(tmp_path / "a")
        with grpc.insecure_channel(
            str(a.outbound[0]), options=[("grpc.default_authority", "node-b")]
        ) as channel:
            reverse = channel.unary_unary("/test.Echo/Reverse")
            reply = await trio.to_thread.run_sync(lambda: reverse(b"mtls", timeout=10))
        assert reply == b"sltm"


async def test_an_upstream_with_the_wrong_identity_is_refused(
    tmp_path, pki, start, hypercorn_upstream
) -> None:
    node_toml(tmp_path / "c", "node-c", pki, inbound=inbound_section(hypercorn_upstream, "node-a"))
    _, c = await start(tmp_path / "c")
    node_toml(tmp_path / "a", "node-a", pki)
    mesh_upstream(tmp_path / "a", "node-b", c.inbound[0])  # node-b's address answered by node-c
    _, a = await start(tmp_path / "a")
    status, headers, body = await fetch(a.outbound[0], "node-b", "/")
    assert (status, headers["x-meshnode-error"]) == (503, "upstream-connect-failure")
    assert f"presented identity spiffe://{TRUST}/service/node-c" in json.loads(body)["detail"]


# -- rejections on the inbound listener, seen by a client that reads ------------------


def client_context(
    pki: Path, name: str | None, *, alpn: bool = True, ca: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or pki / "ca.pem"))
    context.check_hostname = False
    if name is not None:
        context.load_cert_chain(str(pki / f"{name}.pem"), str(pki / f"{name}-key.pem"))
    if alpn:
        context.set_alpn_protocols(["h2"])
    return context


async def h2_request(address: Address, context: ssl.SSLContext | None) -> str:
    """One GET; returns "status NNN" or how the connection ended."""
    transport: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
    try:
        if context is not None:
            transport = trio.SSLStream(transport, context)
            await transport.do_handshake()
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "b")],
            end_stream=True,
        )
        await transport.send_all(conn.data_to_send())
        with trio.fail_after(10):
            while True:
                data = await transport.receive_some(65536)
                if not data:
                    return "closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        return "status " + dict(event.headers)[b":status"].decode()
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        return f"refused ({type(exc.__cause__ or exc).__name__})"
    finally:
        await trio.aclose_forcefully(transport)


def other_ca_leaf(tmp_path: Path) -> Path:
    other = tmp_path / "other-ca"
    certs.init_ca(other, TRUST)
    certs.issue(other, "node-a")
    return other


@pytest.fixture
async def guarded(tmp_path, pki, start, nursery) -> tuple[Address, RawH2Server]:
    """Node B's inbound listener, in front of a local service that counts what reaches it."""
    server = RawH2Server(lambda conn, event: respond(conn, event.stream_id))
    port = await nursery.start(server.serve)
    node_toml(tmp_path / "b", "node-b", pki, inbound=inbound_section(f"127.0.0.1:{port}", "node-a"))
    _, b = await start(tmp_path / "b")
    return b.inbound[0], server


async def test_an_allowed_caller_gets_through(guarded, pki) -> None:
    address, server = guarded
    assert await h2_request(address, client_context(pki, "node-a")) == "status 200"
    assert server.requests == 1


async def test_a_caller_not_allowed_gets_403(guarded, pki) -> None:
    address, server = guarded
    assert await h2_request(address, client_context(pki, "intruder")) == "status 403"
    assert server.requests == 0


def leaf(pki: Path, name: str, **options) -> str:
    certs.issue(pki, name, **options)
    return name


@pytest.mark.parametrize(
    "case",
    [
        "no-client-certificate",
        "another-ca",
        "expired",
        "not-yet-valid",
        "wrong-key-usage",
        "no-alpn",
    ],
)
async def test_refused_callers(guarded, pki, tmp_path, case: str) -> None:
    address, server = guarded
    now = dt.datetime.now(dt.UTC)
    if case == "no-client-certificate":
        context = client_context(pki, None)
    elif case == "another-ca":
        context = client_context(other_ca_leaf(tmp_path), "node-a", ca=pki / "ca.pem")
    elif case == "expired":
        context = client_context(
            pki, leaf(pki, "old", days=1, not_before=now - dt.timedelta(days=2))
        )
    elif case == "not-yet-valid":
        context = client_context(pki, leaf(pki, "early", not_before=now + dt.timedelta(days=1)))
    elif case == "wrong-key-usage":
        usages = (ExtendedKeyUsageOID.SERVER_AUTH,)
        context = client_context(pki, leaf(pki, "server-only", usages=usages))
    else:
        context = client_context(pki, "node-a", alpn=False)
    outcome = await h2_request(address, context)
    assert outcome == "closed" or outcome.startswith("refused"), outcome
    assert server.requests == 0


async def test_plaintext_and_h2c_on_the_tls_port_are_closed(guarded) -> None:
    address, server = guarded
    assert await h2_request(address, None) in ("closed", "refused (BrokenResourceError)")
    stream = await trio.open_tcp_stream(address.host, address.port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    with trio.fail_after(10):
        answer = b""
        while chunk := await _receive(stream):
            answer += chunk
    assert b"HTTP/1.1 200" not in answer
    assert server.requests == 0


async def _receive(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


async def test_tls_1_1_is_refused(guarded) -> None:
    address, server = guarded
    result = await trio.run_process(
        [
            "openssl",
            "s_client",
            "-connect",
            str(address),
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ],
        stdin=b"",
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0, output
    assert "alert protocol version" in output or "Cipher is (NONE)" in output, output
    assert server.requests == 0


# -- rotation -------------------------------------------------------------------------


async def next_event(node: Node, kind: type[Event]) -> Event:
    with node.bus.subscribe() as events, trio.fail_after(10):
        while not isinstance(event := await events.receive(), kind):
            pass
    return event


def serial_presented(address: Address, pki: Path) -> int:
    context = client_context(pki, "node-a")
    with (
        socket.create_connection((address.host, address.port), timeout=10) as raw,
        context.wrap_socket(raw) as secured,
    ):
        der = secured.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_rotation_keeps_open_streams_and_new_connections_get_the_new_certificate(
    chain, pki, tmp_path
) -> None:
    _, a, node_b, b = chain
    old_serial = await trio.to_thread.run_sync(serial_presented, b.inbound[0], pki)
    async with trio.open_nursery() as nursery:
        download: list[tuple[int, dict, bytes]] = []

        async def long_download() -> None:
            download.append(await fetch(a.outbound[0], "node-b", "/drip/20/0.1"))

        nursery.start_soon(long_download)
        assert node_b.local_group is not None
        with trio.fail_after(10):
            while not node_b.local_group.picker.in_flight:  # the long stream is open through B
                await trio.sleep(0.01)
        assert node_b.tls is not None
        with node_b.bus.subscribe() as events:
            certs.issue(pki, "node-b")
            node_b.tls.check()
            rotated = await events.receive()
        assert isinstance(rotated, TLSRotated)
    status, _, body = download[0]
    assert (status, len(body)) == (200, 20 * 1024)  # finished on the old connection
    new_serial = await trio.to_thread.run_sync(serial_presented, b.inbound[0], pki)
    assert new_serial != old_serial
    assert format(new_serial, "x") == rotated.serial  # type: ignore[attr-defined]


async def test_a_bad_new_certificate_is_rejected_and_the_old_stays(chain, pki) -> None:
    _, _, node_b, b = chain
    assert node_b.tls is not None
    serial = node_b.tls.material.serial
    with node_b.bus.subscribe() as events:
        shutil.copy(pki / "node-c.pem", pki / "node-b.pem")  # key no longer matches
        node_b.tls.check()
        rejected = await events.receive()
    assert isinstance(rejected, TLSRejected)
    assert any("does not match the certificate" in line for line in rejected.errors)
    assert node_b.tls.material.serial == serial
    assert await trio.to_thread.run_sync(serial_presented, b.inbound[0], pki) == serial


async def test_an_expired_certificate_fails_readiness(tmp_path, pki, start) -> None:
    soon = dt.datetime.now(dt.UTC) - dt.timedelta(days=1) + dt.timedelta(seconds=2)
    certs.issue(pki, "node-a", days=1, not_before=soon)
    node_toml(tmp_path / "a", "node-a", pki)
    _, a = await start(tmp_path / "a")
    status, health = await admin(a.admin[0], "GET", "/health/ready")
    assert status == 200
    metrics = (
        await trio.run_process(
            [require("curl"), "-s", f"http://{a.admin[0]}/metrics"], capture_stdout=True
        )
    ).stdout.decode()
    assert "meshnode_certificate_expiry_seconds " in metrics
    await trio.sleep(2.5)
    status, health = await admin(a.admin[0], "GET", "/health/ready")
    assert status == 503
    check = next(c for c in health["checks"] if c["name"] == "certificate")
    assert check["message"] == f"spiffe://{TRUST}/service/node-a has expired"


# -- refusing to start, and the certs commands ------------------------------------------------


def test_serve_refuses_a_key_readable_by_others(tmp_path, pki) -> None:
    node_toml(tmp_path / "a", "node-a", pki)
    os.chmod(pki / "node-a-key.pem", 0o644)
    result = meshnode("serve", "--policies", str(tmp_path / "a"))
    assert result.returncode == 1
    assert (
        f"{pki}/node-a-key.pem: private key readable by group or others (mode 0644); chmod 600 it"
    ) in result.stderr


def test_certs_commands_make_what_openssl_confirms(tmp_path) -> None:
    directory = tmp_path / "certs"
    result = meshnode("certs", "init", "--dir", str(directory), "--trust-domain", "prod.example")
    assert result.returncode == 0, result.stderr
    assert oct(os.stat(directory / "ca-key.pem").st_mode & 0o777) == "0o600"
    assert meshnode("certs", "init", "--dir", str(directory)).returncode == 1  # no overwrite
    assert meshnode("certs", "issue", "api", "--dir", str(directory), "--days", "7").returncode == 0
    assert oct(os.stat(directory / "api-key.pem").st_mode & 0o777) == "0o600"
    ca_text = subprocess.run(
        ["openssl", "x509", "-in", str(directory / "ca.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CA:TRUE" in ca_text and "ASN1 OID: prime256v1" in ca_text
    text = subprocess.run(
        ["openssl", "x509", "-in", str(directory / "api.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "URI:spiffe://prod.example/service/api, DNS:api" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text and "ASN1 OID: prime256v1" in text
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(directory / "ca.pem"), str(directory / "api.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.stdout.strip().endswith(": OK")
    inspect = json.loads(meshnode("certs", "inspect", str(directory / "api.pem"), "--json").stdout)
    assert inspect["identity"] == "spiffe://prod.example/service/api"
    assert inspect["sans"] == ["URI:spiffe://prod.example/service/api", "DNS:api"]
    assert 6.9 < inspect["days_left"] <= 7
    human = meshnode("certs", "inspect", str(directory / "api.pem")).stdout
    assert "identity:    spiffe://prod.example/service/api" in human


def test_the_two_node_example_runs_as_written(tmp_path) -> None:
    readme = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = readme[readme.index("## mTLS between nodes") :]
    script = section[
        section.index("```sh\n") + 6 : section.index("```", section.index("```sh") + 5)
    ]
    assert script.startswith("./dev setup && export PATH=$PWD/.venv/bin:$PATH\n")
    script = script.replace(
        "./dev setup && export PATH=$PWD/.venv/bin:$PATH",
        f"export PATH={Path(sys.executable).parent}:$PATH",
    ).replace("/tmp/mesh", str(tmp_path / "mesh"))
    result = subprocess.run(
        ["bash", "-c", "set -e\n" + script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["x-meshnode-peer-identity"] == f"spiffe://{TRUST}/service/web", result.stderr


async def test_the_inbound_listener_holds_peers_to_the_same_limits(guarded, pki) -> None:
    address, server = guarded
    assert server.requests == 0
    pings = bytes(PingFrame(0).serialize()) * 5000
    exchange = await attack(address, [pings], tls=client_context(pki, "node-a"))
    goaway = exchange.goaway()
    assert goaway is not None and goaway.error_code == 0xB  # ENHANCE_YOUR_CALM
    assert await h2_request(address, client_context(pki, "node-a")) == "status 200"
    assert server.requests == 1


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(guarded) -> None:
    address, server = guarded
    stream = await trio.open_tcp_stream(address.host, address.port)
    started = trio.current_time()
    with trio.fail_after(10):
        assert await _receive(stream) == b""  # sent nothing: closed at handshake_timeout (2 s)
    assert 1.5 < trio.current_time() - started < 5
    assert server.requests == 0

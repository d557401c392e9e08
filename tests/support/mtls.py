"""Policy files for nodes that talk mTLS: a node with its certificate, an inbound listener,
an upstream reached over mTLS."""

from __future__ import annotations

import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshnode import certs
from meshnode.node import NodeAddresses
from meshnode.policy import Address

TRUST = "mesh.local"


def node_toml(directory: Path, name: str, certs_dir: Path, *, inbound: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.toml").write_text(
        textwrap.dedent(f"""
        [node]
        name = "{name}"
        trust_domain = "{TRUST}"
        drain_timeout = "5s"

        [listeners.outbound]
        address = "127.0.0.1:0"

        [admin]
        address = "127.0.0.1:0"

        [tls]
        ca = "{certs_dir}/ca.pem"
        cert = "{certs_dir}/{name}.pem"
        key = "{certs_dir}/{name}-key.pem"
        """)
        + inbound
    )


def inbound_section(local: str, *allowed: str) -> str:
    listed = ", ".join(f'"spiffe://{TRUST}/service/{name}"' for name in allowed)
    return textwrap.dedent(f"""
        [listeners.inbound]
        address = "127.0.0.1:0"
        local = "{local}"
        allow = [{listed}]
        handshake_timeout = "2s"
    """)


def mesh_upstream(directory: Path, name: str, address: Address, *extra: str) -> None:
    (directory / f"{name}.toml").write_text(
        textwrap.dedent(f"""
        [upstream]
        name = "{name}"
        tls = "mesh"
        [discovery]
        endpoints = ["{address}"]
        """)
        + "".join(extra)
    )


async def mtls_chain(
    tmp_path: Path,
    running: Callable[[Path], Awaitable[tuple[Any, NodeAddresses]]],
    local: str,
    *,
    allowed: str = "node-a",
    local_protocol: str = "h2",
    route: str = "",
) -> NodeAddresses:
    """node A -> HTTP/2 over mTLS -> node B's inbound listener -> ``local``; B lets in
    ``allowed``. Returns A's addresses (its outbound listener is where callers go); A's
    upstream ``node-b`` gets ``route`` added."""
    pki = tmp_path / "pki"
    certs.init_ca(pki, TRUST)
    for name in ("node-a", "node-b"):
        certs.issue(pki, name)
    inbound = inbound_section(local, allowed) + f'local_protocol = "{local_protocol}"\n'
    node_toml(tmp_path / "b", "node-b", pki, inbound=textwrap.dedent(inbound))
    _, b = await running(tmp_path / "b")
    node_toml(tmp_path / "a", "node-a", pki)
    mesh_upstream(tmp_path / "a", "node-b", b.inbound[0], route)
    _, a = await running(tmp_path / "a")
    return a

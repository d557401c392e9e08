"""Policy files for nodes that talk mTLS: a node with its certificate, an inbound listener,
an upstream reached over mTLS."""

from __future__ import annotations

import textwrap
from pathlib import Path

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

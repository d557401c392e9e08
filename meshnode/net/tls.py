"""TLS for the mesh: checked certificate material, SSL contexts, peer identities, rotation.

Python's ssl module leaves three things to us (SECURITY-NOTES.md): ALPN is
not enforced, SPIFFE identities (URI SANs) are not checked, and a key file's
permissions are not looked at. ``load_material`` checks everything that can be
checked before a context is built; the listener and the connector check ALPN
and identity after each handshake. Rotation builds new contexts for new
connections; open connections keep theirs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshnode.errors import UpstreamConnectFailure
from meshnode.events import Event, EventBus
from meshnode.policy.units import Address

log = logging.getLogger(__name__)

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all of that already).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN = "h2"
EXPIRY_WARNING = dt.timedelta(days=7)


class TLSMaterialError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@attrs.frozen(kw_only=True)
class TLSRotated(Event):
    type = "tls-rotated"
    identity: str
    serial: str
    not_after: str


@attrs.frozen(kw_only=True)
class TLSRejected(Event):
    type = "tls-rejected"
    errors: list[str]


@attrs.frozen(kw_only=True)
class CertificateExpiring(Event):
    type = "certificate-expiring"
    identity: str
    days_left: float


@attrs.frozen
class TLSMaterial:
    ca: Path
    cert: Path
    key: Path
    identity: str
    serial: int
    not_after: dt.datetime
    server: ssl.SSLContext
    client: ssl.SSLContext

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or _now())).total_seconds()


def load_material(ca: Path, cert: Path, key: Path, now: dt.datetime | None = None) -> TLSMaterial:
    """Read and check the node's CA, certificate and key; every problem is listed at once."""
    now = now or _now()
    problems: list[str] = []
    try:
        mode = os.stat(key).st_mode & 0o777
        if mode & 0o077:
            problems.append(
                f"{key}: private key readable by group or others (mode {mode:04o}); chmod 600 it"
            )
    except OSError as exc:
        problems.append(f"{key}: cannot read: {exc.strerror or exc}")
    ca_cert = _certificate(ca, problems)
    leaf = _certificate(cert, problems)
    private = None
    data = _read(key, problems)
    if data is not None:
        try:
            private = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError) as exc:
            problems.append(f"{key}: not a PEM private key ({exc})")
    identity = None
    if leaf is not None:
        identity = _identity(leaf)
        problems.extend(_leaf_problems(cert, leaf, identity, now))
        if private is not None and _public_der(leaf.public_key()) != _public_der(
            private.public_key()
        ):
            problems.append(f"{key}: does not match the certificate {cert}")
        if ca_cert is not None:
            try:
                leaf.verify_directly_issued_by(ca_cert)
            except (ValueError, TypeError, InvalidSignature) as exc:
                problems.append(f"{cert}: not issued by the CA {ca} ({type(exc).__name__})")
    if problems or leaf is None or identity is None:
        raise TLSMaterialError(problems)
    return TLSMaterial(
        ca,
        cert,
        key,
        identity,
        leaf.serial_number,
        leaf.not_valid_after_utc,
        _context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key),
        _context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key),
    )


def _read(path: Path, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None


def _certificate(path: Path, problems: list[str]) -> x509.Certificate | None:
    data = _read(path, problems)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        problems.append(f"{path}: not a PEM certificate ({exc})")
        return None


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _leaf_problems(
    path: Path, leaf: x509.Certificate, identity: str | None, now: dt.datetime
) -> list[str]:
    problems = []
    if identity is None:
        problems.append(f"{path}: no spiffe:// identity among its URI SANs")
    if leaf.not_valid_after_utc <= now:
        problems.append(f"{path}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        problems.append(f"{path}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        for usage, word in (
            (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
            (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
        ):
            if usage not in usages:
                problems.append(f"{path}: lacks the {word} extended key usage")
    except x509.ExtensionNotFound:
        pass  # no extended key usage at all: the certificate may serve any purpose
    return problems


def _identity(cert: x509.Certificate) -> str | None:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return str(uri)
    return None


def _context(side: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(side)
    if side == ssl.PROTOCOL_TLS_CLIENT:
        context.check_hostname = False  # the identity is a URI SAN, checked after the handshake
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols([ALPN])
    return context


def peer_identity(stream: trio.SSLStream[Any]) -> str | None:
    """The peer's SPIFFE ID from its verified certificate (the first spiffe:// URI SAN)."""
    certificate = stream.getpeercert()
    if not certificate:
        return None
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith("spiffe://"):
            return value
    return None


class TLSManager:
    """The node's current material; ``check`` re-reads it when the files changed.

    A bad new set (unparseable, mismatched, expired, too readable) is rejected:
    the old material stays and ``tls-rejected`` is published.
    """

    def __init__(self, paths: Sequence[Path], bus: EventBus) -> None:
        ca, cert, key = paths
        self.paths = (ca, cert, key)
        self.material = load_material(ca, cert, key)
        self._bus = bus
        self._seen = _stat(self.paths)
        self._warned_serial: int | None = None

    def check(self) -> None:
        """Poll: reload on change, warn once per certificate when expiry comes near."""
        seen = _stat(self.paths)
        if seen != self._seen:
            self._seen = seen
            self.rotate()
        material = self.material
        left = material.seconds_left()
        if left < EXPIRY_WARNING.total_seconds() and self._warned_serial != material.serial:
            self._warned_serial = material.serial
            log.warning("certificate %s expires in %.1f days", material.identity, left / 86400)
            self._bus.publish(
                CertificateExpiring(identity=material.identity, days_left=round(left / 86400, 2))
            )

    def rotate(self) -> bool:
        try:
            material = load_material(*self.paths)
        except TLSMaterialError as exc:
            log.error("new TLS material rejected; the old stays in use: %s", exc)
            self._bus.publish(TLSRejected(errors=exc.problems))
            return False
        self.material = material
        log.info("TLS material rotated: %s serial %x", material.identity, material.serial)
        self._bus.publish(
            TLSRotated(
                identity=material.identity,
                serial=format(material.serial, "x"),
                not_after=material.not_after.isoformat(),
            )
        )
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.check()


def _stat(paths: Sequence[Path]) -> tuple[tuple[int, int, int], ...]:
    stats = []
    for path in paths:
        try:
            info = os.stat(path)
            stats.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append((0, 0, 0))
    return tuple(stats)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def connect_mesh(
    address: Address, peer: str, context: ssl.SSLContext, server_name: str | None = None
) -> trio.SSLStream[trio.SocketStream]:
    """An mTLS connection to ``address`` that has proven to be ``peer`` and speaks h2.

    Never falls back to cleartext: any failure is ``UpstreamConnectFailure``.
    The caller bounds the time (the pool's connect timeout covers the handshake).
    """
    tcp = await trio.open_tcp_stream(address.host, address.port)
    secured = trio.SSLStream(tcp, context, server_hostname=server_name)
    try:
        await secured.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(secured)
        raise UpstreamConnectFailure(
            f"{address}: TLS handshake failed: {exc.__cause__ or exc}"
        ) from exc
    problem = None
    if secured.selected_alpn_protocol() != ALPN:
        problem = f"negotiated ALPN {secured.selected_alpn_protocol()!r}, not {ALPN!r}"
    else:
        presented = peer_identity(secured)
        if presented != peer:
            problem = f"presented identity {presented}, expected {peer}"
    if problem is not None:
        log.warning("refusing upstream %s: %s", address, problem)
        await trio.aclose_forcefully(secured)
        raise UpstreamConnectFailure(f"{address}: {problem}")
    return secured

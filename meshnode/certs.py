"""The mesh's certificate material: a CA, leaf certificates with SPIFFE identities, inspection.

A node's identity is the URI SAN ``spiffe://<trust_domain>/service/<name>``.
The CA carries ``spiffe://<trust_domain>`` as its own URI SAN, so issuing a
leaf needs nothing but the CA files. Keys are ECDSA P-256 and are written with
mode 0600, created exclusively so that they are never readable in between.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 30
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


class CertError(Exception):
    """A certificate operation that cannot be done; the message says why."""


@attrs.frozen
class Issued:
    cert: Path
    key: Path


def spiffe_id(trust_domain: str, name: str) -> str:
    return f"spiffe://{trust_domain}/service/{name}"


def init_ca(directory: Path, trust_domain: str, *, force: bool = False) -> Issued:
    """A new mesh CA in ``directory`` (ca.pem, ca-key.pem); refuses to overwrite unless forced."""
    issued = Issued(directory / "ca.pem", directory / "ca-key.pem")
    if not force and (issued.cert.exists() or issued.key.exists()):
        raise CertError(f"{directory} already holds a CA; --force replaces it (and every leaf)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshnode CA {trust_domain}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write_key(issued.key, key, replace=force)
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return issued


def issue(
    directory: Path,
    name: str,
    *,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    usages: tuple[x509.ObjectIdentifier, ...] = SERVER_AND_CLIENT,
    force: bool = True,
) -> Issued:
    """A leaf for service ``name`` signed by the CA in ``directory``: NAME.pem, NAME-key.pem."""
    ca_cert, ca_key = load_ca(directory)
    trust_domain = trust_domain_of(ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(spiffe_id(trust_domain, name)),
                    x509.DNSName(name),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(directory / f"{name}.pem", directory / f"{name}-key.pem")
    _write_key(issued.key, key, replace=force)
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return issued


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise CertError(f"no usable CA in {directory} ({exc}); run `meshnode certs init`") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory}/ca-key.pem is not an ECDSA key")
    return cert, key


def trust_domain_of(ca_cert: x509.Certificate) -> str:
    for uri in _uris(ca_cert):
        if uri.startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
            return uri[len("spiffe://") :]
    raise CertError("the CA certificate names no spiffe:// trust domain")


def identity_of(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE ID: its first ``spiffe://`` URI SAN with a path."""
    for uri in _uris(cert):
        if uri.startswith("spiffe://") and "/" in uri[len("spiffe://") :]:
            return uri
    return None


def describe(path: Path) -> dict[str, object]:
    """What ``meshnode certs inspect`` prints."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"{path}: not a PEM certificate ({exc})") from exc
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"URI:{v}" for v in sans.get_values_for_type(x509.UniformResourceIdentifier)]
        names += [f"DNS:{v}" for v in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    left = cert.not_valid_after_utc - _now()
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "identity": identity_of(cert),
        "sans": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": round(left.total_seconds() / 86400, 1),
    }


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(sans.get_values_for_type(x509.UniformResourceIdentifier))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, replace: bool) -> None:
    """Write the key 0600 from the first byte: never readable by others, even for a moment."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if replace and path.exists():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

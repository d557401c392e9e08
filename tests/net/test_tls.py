"""Checks of TLS material before any context is built: every problem listed at once."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import trio

from meshnode import certs
from meshnode.events import EventBus
from meshnode.net.tls import CertificateExpiring, TLSManager, TLSMaterialError, load_material


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path, "mesh.local")
    certs.issue(tmp_path, "api")
    certs.issue(tmp_path, "web")
    return tmp_path


def material_problems(pki: Path, cert: str = "api", key: str = "api", ca: str = "ca") -> list[str]:
    with pytest.raises(TLSMaterialError) as caught:
        load_material(pki / f"{ca}.pem", pki / f"{cert}.pem", pki / f"{key}-key.pem")
    return [line.replace(f"{pki}/", "") for line in caught.value.problems]


def test_good_material(pki: Path) -> None:
    material = load_material(pki / "ca.pem", pki / "api.pem", pki / "api-key.pem")
    assert material.identity == "spiffe://mesh.local/service/api"
    assert 29 * 86400 < material.seconds_left() <= 30 * 86400


def test_a_key_that_does_not_match_and_is_too_readable(pki: Path) -> None:
    os.chmod(pki / "web-key.pem", 0o640)
    assert material_problems(pki, key="web") == [
        "web-key.pem: private key readable by group or others (mode 0640); chmod 600 it",
        "web-key.pem: does not match the certificate api.pem",
    ]


def test_expired_and_not_yet_valid(pki: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    certs.issue(pki, "api", days=1, not_before=past)
    assert material_problems(pki)[0].startswith("api.pem: expired on ")
    certs.issue(pki, "api", not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert material_problems(pki)[0].startswith("api.pem: not valid before ")


def test_another_ca_and_garbage(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.init_ca(other, "mesh.local")
    (pki / "other-ca.pem").write_bytes((other / "ca.pem").read_bytes())
    assert material_problems(pki, ca="other-ca") == [
        "api.pem: not issued by the CA other-ca.pem (InvalidSignature)"
    ]
    (pki / "api.pem").write_text("not a certificate")
    assert material_problems(pki)[0].startswith("api.pem: not a PEM certificate")


async def test_expiry_inside_a_week_is_announced_once(pki: Path) -> None:
    certs.issue(pki, "api", days=3)
    bus = EventBus()
    with bus.subscribe() as events:
        manager = TLSManager((pki / "ca.pem", pki / "api.pem", pki / "api-key.pem"), bus)
        manager.check()
        manager.check()
        event = await events.receive()
        assert isinstance(event, CertificateExpiring)
        assert 2.9 < event.days_left <= 3
        with trio.move_on_after(0.1):
            await events.receive()
            pytest.fail("announced twice")

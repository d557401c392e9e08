"""A real etcd (Debian's etcd-server) on 127.0.0.1, in a temporary data directory; stoppable
and restartable on the same ports and data, as a registry outage. On a host of the tests'
(tests/support/netns.py), ``host`` is that host's address and ``wrapper`` runs etcd there,
and curl there for what the test asks of it. With ``tls`` (CA, certificate, key files) it
serves https and asks every client for a certificate signed by that CA; ``client`` is the
certificate and key the test itself presents."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.conftest import free_port, require


class Etcd:
    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        wrapper: Sequence[str] = (),
        tls: tuple[str, str, str] | None = None,
        client: tuple[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.client = client
        self.host = host
        self.wrapper = list(wrapper)
        self.client_port, self.peer_port = (2379, 2380) if wrapper else (free_port(), free_port())
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    def start(self) -> None:
        peer = f"http://{self.host}:{self.peer_port}"
        self._process = subprocess.Popen(
            [
                *self.wrapper,
                require("etcd"),
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"default={peer}",
                "--log-level",
                "error",
                *self._tls_options(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"etcd failed: {self._process.communicate()[1].decode()}")
            if self._healthy():
                return
            time.sleep(0.05)
        raise RuntimeError("etcd did not become healthy within 15 s")

    def _tls_options(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls
        return [
            *("--cert-file", cert, "--key-file", key),
            *("--client-cert-auth", "--trusted-ca-file", ca),
        ]

    def _client(self) -> httpx.Client:
        if self.tls is None:
            return httpx.Client(timeout=5)
        context = ssl.create_default_context(cafile=self.tls[0])
        if self.client is not None:
            context.load_cert_chain(*self.client)
        return httpx.Client(timeout=5, verify=context)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def put(self, key: str, value: object) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        self._call("/v3/kv/put", {"key": _b64(key), "value": _b64(text)})

    def delete(self, key: str) -> None:
        self._call("/v3/kv/deleterange", {"key": _b64(key)})

    def _healthy(self) -> bool:
        if self.wrapper:
            probe = [*self.wrapper, require("curl"), "-s", "-f", f"{self.url}/health"]
            return (
                subprocess.run(probe, capture_output=True, timeout=5, check=False).returncode == 0
            )
        try:
            with self._client() as client:
                return client.get(f"{self.url}/health", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def _call(self, path: str, body: object) -> None:
        if self.wrapper:
            call = [*self.wrapper, require("curl"), "-s", "-f", "-d", json.dumps(body)]
            subprocess.run(
                [*call, f"{self.url}{path}"], capture_output=True, timeout=10, check=True
            )
            return
        with self._client() as client:
            client.post(f"{self.url}{path}", json=body).raise_for_status()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()

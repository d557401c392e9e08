"""Debian's dnsmasq as a real DNS server on 127.0.0.1 and a high port, restartable with
other records (its SRV records are command-line options: a change is a restart)."""

from __future__ import annotations

import socket
import subprocess
import time

from tests.conftest import free_port, require

DOMAIN = "mesh.test"


class Dnsmasq:
    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, *, srv: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> None:
        """(Re)start with these records: ``srv`` as "name,target,port,priority,weight",
        ``hosts`` as "name,address"; return once it answers on TCP."""
        self.stop()
        self._process = subprocess.Popen(
            [
                require("dnsmasq"),
                "--keep-in-foreground",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file=",
                f"--local=/{DOMAIN}/",  # authoritative for the domain: NXDOMAIN, not REFUSED
                "--local-ttl=1",
                *(f"--srv-host={record}" for record in srv),
                *(f"--host-record={record}" for record in hosts),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                _, errors = self._process.communicate()
                raise RuntimeError(f"dnsmasq failed: {errors.decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("dnsmasq did not start within 5 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
            self._process = None

"""Shared fixtures: real upstream servers and meshnode itself, all on loopback port 0."""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from meshnode.node import Node, NodeAddresses
from meshnode.policy import load_policies
from tests.support.rawh2 import RawH2Server, respond
from tests.support.upstream_app import app

NODE_TOML = """
[node]
name = "test-node"
drain_timeout = "{drain}"

[listeners.outbound]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"
"""


def upstream_toml(name: str, *endpoints: str, extra: str = "", upstream_keys: str = "") -> str:
    """An upstream's policy: static ``endpoints``, ``upstream_keys`` (lines) added to its
    ``[upstream]`` section and ``extra`` sections after them."""
    listed = ", ".join(f'"{endpoint}"' for endpoint in endpoints)
    keys = textwrap.indent(upstream_keys, " " * 8)
    return textwrap.dedent(f"""
        [upstream]
        name = "{name}"
        tls = "none"
{keys}
        [discovery]
        backend = "static"
        endpoints = [{listed}]
    """) + textwrap.dedent(extra)


def write_policies(directory: Path, upstreams: dict[str, str], *, drain: str = "5s") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.toml").write_text(NODE_TOML.format(drain=drain))
    for name, text in upstreams.items():
        (directory / f"{name}.toml").write_text(text)
    return directory


async def serve_asgi(
    nursery: trio.Nursery, application: Any, *, certfile: str = "", keyfile: str = ""
) -> str:
    """Serve an ASGI app with Hypercorn on 127.0.0.1 (TLS with a certificate and key);
    return "127.0.0.1:PORT"."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "warning"
    config.graceful_timeout = 0.1
    # Hypercorn's GOAWAY after keep_alive_max_requests moves h2 to CLOSED, so the
    # requests already in flight on that connection die with it (python-hyper/h2#1181).
    config.keep_alive_max_requests = 10**9
    # Hypercorn can close an HTTP/1.1 connection that is waiting on a long poll (a
    # registry's blocking query) when its 5 s keep-alive timer fires: keep them open.
    config.keep_alive_timeout = 600
    if certfile:
        config.certfile, config.keyfile = certfile, keyfile
    binds = await nursery.start(functools.partial(serve, application, config))
    return str(binds[0]).split("://", 1)[1]


@pytest.fixture
async def hypercorn_upstream(nursery: trio.Nursery) -> str:
    """A Hypercorn HTTP/2 server running the test app; yields "127.0.0.1:PORT"."""
    return await serve_asgi(nursery, app)


@pytest.fixture
def start_node(nursery: trio.Nursery) -> Callable[[Path], Awaitable[NodeAddresses]]:
    """Start meshnode in this test's trio loop on a policies directory; return its addresses."""

    async def start(directory: Path) -> NodeAddresses:
        node = Node(load_policies(directory))
        addresses: NodeAddresses = await nursery.start(
            functools.partial(node.run, handle_signals=False)
        )
        return addresses

    return start


async def answering(nursery: trio.Nursery, body: bytes) -> str:
    """A raw h2 upstream that answers every request with ``body``; returns its address."""
    port = await nursery.start(
        RawH2Server(lambda conn, event: respond(conn, event.stream_id, body)).serve
    )
    return f"127.0.0.1:{port}"


@pytest.fixture
async def running(nursery: trio.Nursery):
    """Start an in-process node on a directory, without the file watcher unless asked."""

    async def start(directory: Path, *, watch: bool = False) -> tuple[Node, NodeAddresses]:
        node = Node(load_policies(directory), poll_interval=0.05 if watch else None)
        addresses = await nursery.start(functools.partial(node.run, handle_signals=False))
        return node, addresses

    return start


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run ./dev test, which installs it")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def start_nghttpd(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Start nghttpd from Debian serving a 1 KiB /index.html over cleartext HTTP/2."""
    docroot = tmp_path / "htdocs"
    docroot.mkdir()
    (docroot / "index.html").write_bytes(b"k" * 1024)
    servers: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = free_port()
        servers.append(
            subprocess.Popen(
                [require("nghttpd"), "--no-tls", "-a", "127.0.0.1", "-d", str(docroot), str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nghttpd did not listen on {port}")

    yield start
    for server in servers:
        server.kill()
        server.wait()


class NodeProcess:
    """``meshnode serve`` as a user runs it, in its own process."""

    READY = r"meshnode ready: outbound=(\S+) admin=(\S+)"

    def __init__(
        self,
        directory: Path,
        *options: str,
        ready: str = READY,
        launcher: tuple[str, ...] = ("-m", "meshnode"),
        wrapper: Sequence[str] = (),
    ) -> None:
        """Start it, and return once a log line matches ``ready`` (outbound, admin);
        ``launcher``: what the interpreter runs, before ``serve``; ``wrapper``: what runs
        the interpreter (``ip netns exec NS``, for a node on a host of the tests')."""
        self.process = subprocess.Popen(
            [*wrapper, sys.executable, *launcher, "serve", "--policies", str(directory), *options],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log: list[str] = []
        self._logged = threading.Condition()
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(ready, line)
            if found:
                self.ready_line = line
                self.outbound, self.admin = found.group(1), found.group(2)
                # Keep reading, or a chatty node fills the pipe and blocks on its next line.
                self._reader = threading.Thread(target=self._read_log, daemon=True)
                self._reader.start()
                return
        raise AssertionError("meshnode exited before it was ready:\n" + "".join(self.log))

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._logged:
                self.log.append(line)
                self._logged.notify_all()

    def wait_for_log(self, text: str, timeout: float = 30, *, count: int = 1) -> str:
        """The ``count``th line of the log that holds ``text``, waiting for it if need be."""
        with self._logged:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [line for line in self.log if text in line]
                return len(found) >= count

            if not self._logged.wait_for(seen, timeout):
                raise AssertionError(f"no {count} log line(s) with {text!r} within {timeout}s")
            return found[count - 1]

    def admin_page(self, path: str) -> str:
        """What the admin listener answers a GET of ``path`` (``/metrics``, ``/``...)."""
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as answer:
            text: str = answer.read().decode()
        return text

    def rest_of_log(self) -> str:
        """The whole log, once the node has closed it (exited)."""
        self._reader.join()
        return "".join(self.log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def node_process() -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def start(directory: Path, *options: str, ready: str = NodeProcess.READY) -> NodeProcess:
        node = NodeProcess(directory, *options, ready=ready)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()

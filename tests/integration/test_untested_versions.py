"""meshnode on a trio it was not tested with: trio's own loop (no busy polling), a
warning, and the node serves all the same. A newer trio is simulated by the version the
node reads from the installed metadata, in a ``meshnode serve`` of its own."""

from __future__ import annotations

import subprocess
import textwrap

from tests.conftest import NodeProcess, require, upstream_toml, write_policies

# Runs `meshnode serve` with importlib.metadata answering newer, unreleased versions.
NEWER = textwrap.dedent(
    """
    import importlib.metadata as metadata
    import sys
    real = metadata.version
    faked = {"trio": "0.99.0"}
    metadata.version = lambda name: faked.get(name) or real(name)
    from meshnode.cli import main
    sys.argv[0] = "meshnode"
    main()
    """
)


def test_a_newer_trio_falls_back_and_serves(tmp_path, start_nghttpd) -> None:
    upstream = start_nghttpd()
    policies = write_policies(tmp_path, {"web": upstream_toml("web", upstream)})
    node_toml = policies / "node.toml"
    node_toml.write_text(node_toml.read_text().replace("[node]\n", '[node]\nbusy_poll = "50us"\n'))
    node = NodeProcess(policies, "--log-level", "info", launcher=("-c", NEWER))
    try:
        result = subprocess.run(
            [
                require("curl"),
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "host: web",
                f"http://{node.outbound}/index.html",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert result.stdout == "200"
        warning = node.wait_for_log("busy polling off")
        assert "trio 0.99.0 (tested 0.27 to 0.35)" in warning
    finally:
        node.stop()

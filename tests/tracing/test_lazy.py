"""A node without [tracing] never imports the OpenTelemetry SDK (its import costs time and
memory at every start, and a node that does not trace has no use for it)."""

from __future__ import annotations

import subprocess
import sys


def test_the_node_and_the_client_import_no_opentelemetry() -> None:
    script = (
        "import sys, meshnode.cli, meshnode.node, meshnode.client\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)

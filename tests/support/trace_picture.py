"""A trace drawn as a waterfall (SVG), from the spans an OTLP receiver got.

``python -m tests.support.trace_picture docs/tracing-retry.svg`` runs the picture in
docs/tracing.md for real: a meshnode with ``[retry]`` in front of a Hypercorn service
whose first answer is 503, one request through it, and the spans the node exported.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from html import escape
from pathlib import Path

from tests.conftest import NodeProcess, require, upstream_toml, write_policies
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.upstream_processes import hypercorn

ROW, LEFT, WIDTH, LABEL = 34, 300, 560, 290


def _depths(spans: list[ReceivedSpan]) -> dict[str, int]:
    parents = {span.span_id: span.parent_span_id for span in spans}
    depths = {}
    for span in spans:
        depth, parent = 0, span.parent_span_id
        while parent in parents:
            depth, parent = depth + 1, parents[parent]
        depths[span.span_id] = depth
    return depths


def svg(spans: list[ReceivedSpan]) -> str:
    """One row per span, in start order, indented by depth; events as marks on their span."""
    ordered = sorted(spans, key=lambda s: (s.start_ns, -s.end_ns))
    start = min(s.start_ns for s in ordered)
    total = max(s.end_ns for s in ordered) - start or 1
    depths = _depths(ordered)

    def x(ns: int) -> float:
        return LEFT + (ns - start) / total * WIDTH

    height = ROW * (len(ordered) + 1) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 40}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="18" font-weight="bold">trace {ordered[0].trace_id}'
        f" ({total / 1e6:.1f} ms)</text>",
    ]
    for row, span in enumerate(ordered, start=1):
        y = row * ROW + 6
        status = span.attributes.get("http.response.status_code", "")
        label = f"{span.service}: {span.name} ({span.kind}) {status}"
        colour = "#d9534f" if span.status == "error" else "#5b8def"
        indent = 10 + 14 * depths[span.span_id]
        left, right = x(span.start_ns), max(x(span.end_ns), x(span.start_ns) + 2)
        parts.append(f'<text x="{indent}" y="{y + 14}">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left:.1f}" y="{y}" width="{right - left:.1f}" height="18" rx="3"'
            f' fill="{colour}"/>'
        )
        parts.append(
            f'<text x="{right + 4:.1f}" y="{y + 14}" fill="#555">'
            f"{(span.end_ns - span.start_ns) / 1e6:.1f} ms</text>"
        )
        for name, attributes in span.events:
            reason = attributes.get("meshnode.retry.reason") or attributes.get(
                "meshnode.fallback.kind", ""
            )
            delay = attributes.get("meshnode.retry.delay_ms")
            text = f"{name} {reason}" + (f" after {delay:g} ms" if delay is not None else "")
            parts.append(
                f'<text x="{LEFT}" y="{y + 30}" fill="#b35900" font-size="11">'
                f"event: {escape(text)}</text>"
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(target: Path) -> None:
    receiver, service = OTLPReceiver(), hypercorn(100_000)
    retry = '[retry]\nretry_on = ["503"]\ninitial_delay = "20ms"\njitter = 0.0\n'
    try:
        with tempfile.TemporaryDirectory() as work:
            directory = write_policies(
                Path(work), {"api": upstream_toml("api", service.address, extra=retry)}
            )
            with (directory / "node.toml").open("a") as node_toml:
                node_toml.write(f'\n[tracing]\nendpoint = "{receiver.endpoint}"\n')
                node_toml.write('sample_ratio = 1.0\nservice_name = "meshnode"\n')
            node = NodeProcess(directory)
            try:
                traceparent = f"00-{'7' * 32}-{'1' * 16}-01"
                subprocess.run(
                    [
                        *(require("curl"), "-s", "--http2-prior-knowledge"),
                        *("-H", "host: api", "-H", f"traceparent: {traceparent}"),
                        f"http://{node.outbound}/flaky/picture",
                        "-o",
                        "/dev/null",
                    ],
                    check=True,
                    timeout=30,
                )
                spans = receiver.wait_for(lambda spans: len(spans) >= 3)
            finally:
                node.stop()
    finally:
        service.stop()
        receiver.close()
    target.write_text(svg(spans))
    print(f"wrote {target}: {len(spans)} spans")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

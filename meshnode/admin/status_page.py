"""The status page on the admin listener (``GET /``): one self-contained page.

Everything is rendered here, on the server: the whole page, and the live part
alone (``GET /status/live``) that the page's small script fetches every two
seconds and on every event, so the same HTML serves browsers with and without
JavaScript (without it, the snapshot refreshes itself every ten seconds). The
script and stylesheet are served from the package (``/static/``): nothing is
fetched from elsewhere, and a Content-Security-Policy allows nothing else.
States are always written out in words next to their colour.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files
from typing import Any

from meshnode.admin.history import SAMPLE_INTERVAL

STATIC = {
    name: files("meshnode.admin").joinpath("static", name).read_bytes()
    for name in ("status.js", "status.css")
}
STATIC_TYPES = {"status.js": "text/javascript", "status.css": "text/css"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SPARK_WIDTH, SPARK_HEIGHT = 120, 24


def page(status: dict[str, Any]) -> str:
    name = escape(status["node"])
    required = "true" if status["token_required"] else "false"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshnode {name}</title>
<link rel="stylesheet" href="/static/status.css">
<noscript><meta http-equiv="refresh" content="10"></noscript>
<script src="/static/status.js" defer></script>
</head>
<body data-token-required="{required}">
<header>
<h1>meshnode <span class="node-name">{name}</span></h1>
</header>
<main>
<div id="live">
{live(status)}
</div>
<section id="controls" aria-labelledby="controls-title">
<h2 id="controls-title">Controls</h2>
<noscript><p>Read-only without JavaScript: the admin API and the <code>meshnode</code>
commands do the same from a shell.</p></noscript>
<form id="unlock" hidden>
<p id="unlock-help">Controls are locked. They call the admin API with your token.</p>
<label for="token">Admin token</label>
<input id="token" type="password" autocomplete="off">
<button type="submit">Unlock controls</button>
</form>
<div id="actions" class="control" hidden>
<button type="button" data-action="reload">Reload policies</button>
<button type="button" data-action="drain">Drain this node</button>
<button type="button" data-action="lock">Lock controls</button>
</div>
<p id="outcome" role="status"></p>
</section>
<section id="feed" aria-labelledby="feed-title">
<h2 id="feed-title">Live events</h2>
<p id="feed-state">Live events need JavaScript (or <code>meshnode events</code>).</p>
<ol id="events" reversed></ol>
</section>
</main>
</body>
</html>
"""


def live(status: dict[str, Any]) -> str:
    """The part of the page that changes: the node's state and every upstream."""
    upstreams = status["upstreams"]
    articles = "\n".join(_upstream(name, report) for name, report in sorted(upstreams.items()))
    version, loaded = escape(status["version"]), escape(status["loaded_at"])
    return f"""<section id="node" aria-labelledby="node-title">
<h2 id="node-title">Node</h2>
<dl>
<dt>State</dt><dd>{_node_state(status)}</dd>
<dt>Policy version</dt><dd><code>{version}</code>, loaded {loaded}</dd>
<dt>Last reload</dt><dd>{_reload(status["last_reload_error"])}</dd>
</dl>
</section>
<section id="upstreams" aria-labelledby="upstreams-title">
<h2 id="upstreams-title">Upstreams ({len(upstreams)})</h2>
{articles}
</section>"""


def _node_state(status: dict[str, Any]) -> str:
    if status["draining"]:
        return _badge("draining", "DRAINING")
    return _badge("serving", "SERVING")


def _reload(error: dict[str, Any] | None) -> str:
    if error is None:
        return "accepted"
    lines = "".join(f"<li>{escape(str(line))}</li>" for line in error.get("errors", []))
    return f'{_badge("rejected", "REJECTED")} <ul class="errors">{lines}</ul>'


def _upstream(name: str, report: dict[str, Any]) -> str:
    breaker = report["breaker"]
    state = breaker["state"]
    discovery = report["discovery"]
    rates = report["rates"]
    key = escape(name)
    return f"""<article class="upstream" id="upstream-{key}" data-breaker="{escape(state)}">
<h3>{key}</h3>
<dl>
<dt>Breaker</dt><dd class="breaker">{_breaker(breaker)}</dd>
<dt>Balancing</dt><dd>{escape(report["strategy"])}</dd>
<dt>Discovery</dt><dd>{_discovery(discovery)}</dd>
<dt>Requests</dt><dd>{_sparkline(rates["requests"], "requests")}</dd>
<dt>Errors</dt><dd>{_sparkline(rates["errors"], "errors")}</dd>
<dt>Connections recycled</dt><dd class="lifecycle">{_lifecycle(report)}</dd>{_adaptive(report)}
</dl>
<div class="control breaker-controls" hidden>
<button type="button" data-breaker="{key}" data-state="open">Force {key} open</button>
<button type="button" data-breaker="{key}" data-state="closed">Force {key} closed</button>
<button type="button" data-breaker="{key}" data-state="auto">{key}: back to automatic</button>
</div>
<div class="table">
<table>
<caption>Endpoints of {key}</caption>
<thead><tr><th scope="col">Address</th><th scope="col">Health</th><th scope="col">Ejected</th>
<th scope="col">In flight</th><th scope="col">Latency (EWMA)</th></tr></thead>
<tbody>
{"".join(_endpoint(endpoint) for endpoint in report["endpoints"]) or _no_endpoints()}
</tbody>
</table>
</div>
</article>"""


def _lifecycle(report: dict[str, Any]) -> str:
    """GOAWAYs received and the requests they left unanswered that were sent again."""
    resent = report["resent"]
    reasons = ", ".join(f"{count} after {escape(why)}" for why, count in resent.items() if count)
    total = sum(resent.values())
    return f"{report['goaways']} GOAWAYs; {total} requests sent again" + (
        f" ({reasons})" if reasons else ""
    )


def _adaptive(report: dict[str, Any]) -> str:
    """The concurrency limit found and the hedges sent, for the upstreams that have them."""
    rows = ""
    limit = report["concurrency_limit"]
    if limit is not None:
        baseline = limit["baseline_rtt_ms"]
        rtt = "" if baseline is None else f"; baseline RTT {baseline:g} ms"
        rows += (
            f'\n<dt>Concurrency limit</dt><dd class="concurrency-limit">{limit["limit"]} '
            f"({escape(limit['algorithm'])}), {limit['in_flight']} in flight, "
            f"{limit['rejected']} refused{rtt}</dd>"
        )
    hedges = report["hedges"]
    if hedges is not None:
        delay = hedges["delay_ms"]
        wait = "no delay yet (too few latencies)" if delay is None else f"after {delay:g} ms"
        held = hedges["budget-exhausted"] + hedges["no-endpoint"]
        rows += (
            f'\n<dt>Hedges</dt><dd class="hedges">{wait}; {hedges["sent"]} sent, '
            f"{hedges['won']} won, {held} held back</dd>"
        )
    return rows


def _breaker(breaker: dict[str, Any]) -> str:
    if not breaker["enabled"]:
        return f"{_badge('closed', 'CLOSED')} (no circuit breaker configured)"
    state = breaker["state"]
    forced = "" if breaker["override"] == "auto" else f" (forced {escape(breaker['override'])})"
    since = _duration(breaker["seconds_in_state"])
    return f"{_badge(state, state.upper())} for {since}{forced}"


def _discovery(discovery: dict[str, Any]) -> str:
    source = escape(discovery["source"])
    if discovery["stale"]:
        error = escape(str(discovery["last_error"]))
        return f"{source} {_badge('stale', 'STALE')}: {error}"
    return f"{source} {_badge('fresh', 'UP TO DATE')}"


def _endpoint(endpoint: dict[str, Any]) -> str:
    health = endpoint["health"]
    ejected = endpoint["ejected"]
    latency = endpoint["ewma_latency_ms"]
    return (
        f'<tr><th scope="row"><code>{escape(endpoint["address"])}</code></th>'
        f"<td>{_badge(health, health.upper())}</td>"
        f"<td>{_badge('ejected', 'EJECTED') if ejected else 'no'}</td>"
        f"<td>{endpoint['in_flight']}</td>"
        f"<td>{'-' if latency is None else f'{latency:.1f} ms'}</td></tr>\n"
    )


def _no_endpoints() -> str:
    return '<tr><td colspan="5">No endpoints</td></tr>'


def _badge(kind: str, word: str) -> str:
    return f'<span class="state state-{escape(kind)}">{escape(word)}</span>'


def _sparkline(values: list[float], what: str) -> str:
    """An inline SVG line of per-second rates, with its numbers in words beside it."""
    if not values:
        return "no data yet"
    now, peak = values[-1], max(values)
    minutes = round(len(values) * SAMPLE_INTERVAL / 60) or 1
    label = f"{what} per second over the last {minutes} min"
    if peak > 0:
        step = SPARK_WIDTH / max(len(values) - 1, 1)
        points = " ".join(
            f"{i * step:.1f},{SPARK_HEIGHT - 1 - (v / peak) * (SPARK_HEIGHT - 2):.1f}"
            for i, v in enumerate(values)
        )
    else:
        points = f"0,{SPARK_HEIGHT - 1} {SPARK_WIDTH},{SPARK_HEIGHT - 1}"
    return (
        f'<svg class="spark spark-{what}" viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}" '
        f'width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" role="img" aria-label="{label}">'
        f'<polyline points="{points}"/></svg> {now:.3g}/s now, peak {peak:.3g}/s'
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""Policy loading: what loads, and the exact error lines for what does not."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from meshnode.policy import PolicyError, load_policies
from meshnode.policy.units import Duration

EXAMPLES = Path(__file__).parents[2] / "policies"

NODE = """
[node]
name = "gateway"
"""

UPSTREAM = """
[upstream]
name = "payments"
tls = "none"

[discovery]
backend = "static"
endpoints = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 3, zone = "a" }]
"""


def write(directory: Path, **files: str) -> Path:
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(textwrap.dedent(text))
    return directory


def errors_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(directory)
    prefix = f"{directory}/"
    return [line.removeprefix(prefix) for line in caught.value.lines]


def test_the_example_policies_load() -> None:
    policies = load_policies(EXAMPLES)
    assert set(policies.upstreams) == {"demo"}


def test_a_valid_directory(tmp_path: Path) -> None:
    policies = load_policies(write(tmp_path, node=NODE, payments=UPSTREAM))
    payments = policies.upstreams["payments"]
    assert [str(e.address) for e in payments.discovery.endpoints] == [
        "127.0.0.1:9000",
        "127.0.0.1:9001",
    ]
    assert payments.discovery.endpoints[1].weight == 3
    assert payments.timeout.request == Duration(10)
    assert policies.node.listeners.outbound.address.port == 15001
    assert policies.files["payments"] == str(tmp_path / "payments.toml")


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    first = load_policies(write(tmp_path, node=NODE, payments=UPSTREAM)).version
    assert load_policies(tmp_path).version == first
    write(tmp_path, payments=UPSTREAM + "\n# a comment\n")
    assert load_policies(tmp_path).version != first


def test_defaults_apply_per_key_and_files_override(tmp_path: Path) -> None:
    node = NODE + '[defaults]\ntimeout = { request = "2s", per_try = "500ms" }\n'
    upstream = UPSTREAM + '[timeout]\nrequest = "7s"\n'
    policy = load_policies(write(tmp_path, node=node, payments=upstream)).upstreams["payments"]
    assert policy.timeout.request == Duration(7)
    assert policy.timeout.per_try == Duration(0.5)


def test_every_error_is_listed_with_file_and_key_path(tmp_path: Path) -> None:
    upstream = """
    [upstream]
    name = "payments"
    tls = "none"
    critical = "yes"
    colour = "blue"

    [discovery]
    endpoints = ["127.0.0.1", { address = "127.0.0.1:1", weight = "3" }]

    [timeout]
    request = 300000
    """
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        "payments.toml: upstream.critical: expected true or false, got 'yes'",
        "payments.toml: upstream.colour: unknown key",
        'payments.toml: discovery.endpoints.0: expected an address like "127.0.0.1:8080", '
        "got '127.0.0.1'",
        "payments.toml: discovery.endpoints.1.weight: expected an integer, got '3'",
        'payments.toml: timeout.request: expected a duration like "30s", got 300000',
    ]


def test_errors_of_several_files_are_all_reported(tmp_path: Path) -> None:
    write(tmp_path, node=NODE + "[admin]\nadress = '127.0.0.1:1'\n", broken="[upstream\n")
    write(tmp_path, other="[upstream]\ntls = 'none'\n[discovery]\nendpoints = ['a:1']\n")
    assert errors_of(tmp_path) == [
        "node.toml: admin.adress: unknown key",
        "broken.toml: TOML syntax: Expected ']' at the end of a table declaration "
        "(at line 1, column 10)",
        "other.toml: upstream.name: required key is missing",
    ]


def test_limits_are_checked_key_by_key(tmp_path: Path) -> None:
    node = NODE + (
        "[limits]\nmax = 1\nmax_concurrent_streams = 0\nmax_frame_size = 100\n"
        'idle_timeout = "0s"\n[limits.frame_rates]\nping = -1\n'
    )
    assert errors_of(write(tmp_path, node=node, payments=UPSTREAM)) == [
        "node.toml: limits.max: unknown key",
    ]
    node = NODE + (
        "[limits]\nmax_concurrent_streams = 0\nmax_frame_size = 100\n"
        'idle_timeout = "0s"\n[limits.frame_rates]\nping = -1\n'
    )
    assert errors_of(write(tmp_path, node=node, payments=UPSTREAM)) == [
        "node.toml: limits.max_concurrent_streams: must be at least 1, got 0",
        "node.toml: limits.max_frame_size: expected 16384 to 16777215, got 100",
        "node.toml: limits.idle_timeout: must be more than 0, got 0",
        "node.toml: limits.frame_rates.ping: must be more than 0, got -1",
    ]


def test_busy_poll_is_a_short_duration(tmp_path: Path) -> None:
    node = NODE + 'busy_poll = "50us"\n'
    assert load_policies(write(tmp_path, node=node, payments=UPSTREAM)).node.node.busy_poll == (
        pytest.approx(0.00005)
    )
    node = NODE + 'busy_poll = "50ms"\n'  # a slip for "50us" would burn a core
    assert errors_of(write(tmp_path, node=node, payments=UPSTREAM)) == [
        "node.toml: node.busy_poll: expected 0s up to 1ms, got 50ms",
    ]


def test_http1_is_for_cleartext_upstreams(tmp_path: Path) -> None:
    upstream = """
    [upstream]
    name = "payments"
    protocol = "http1"

    [discovery]
    endpoints = ["127.0.0.1:1"]
    """
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        'payments.toml: upstream.protocol: http1 needs tls = "none": traffic between nodes is '
        "HTTP/2 over mTLS",
    ]
    allowed = upstream.replace('protocol = "http1"', 'protocol = "http1"\ntls = "none"')
    policies = load_policies(write(tmp_path, node=NODE, payments=allowed))
    assert policies.upstreams["payments"].upstream.protocol == "http1"


def test_unknown_choice_lists_the_choices(tmp_path: Path) -> None:
    upstream = UPSTREAM.replace('backend = "static"', 'backend = "carrier-pigeon"')
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        'payments.toml: discovery.backend: expected one of "static", "file", "dns", "consul", '
        '"kubernetes", "etcd", got \'carrier-pigeon\''
    ]


def test_each_backend_takes_its_own_keys(tmp_path: Path) -> None:
    upstream = """
    [upstream]
    name = "payments"
    [discovery]
    backend = "dns"
    consul_url = "http://127.0.0.1:8500"
    """
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        "payments.toml: discovery.name: required key is missing",
        "payments.toml: discovery.consul_url: unknown key",
    ]


def test_semantic_checks(tmp_path: Path) -> None:
    upstream = """
    [upstream]
    name = "Payments_V2"

    [[routes]]
    path_prefix = "pay"

    [discovery]
    endpoints = []
    """
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        "payments.toml: upstream.name: 'Payments_V2' must be a lowercase host name (letters, "
        "digits, '-' and '.'), since it is matched against :authority",
        "payments.toml: discovery.endpoints: a static upstream needs at least one endpoint",
        "payments.toml: routes.0.path_prefix: must start with '/'",
    ]


def test_duplicate_names_and_routes(tmp_path: Path) -> None:
    route = '[[routes]]\npath_prefix = "/pay/"\n'
    write(tmp_path, node=NODE, a=UPSTREAM + route, b=UPSTREAM + route)
    write(tmp_path, c=UPSTREAM.replace('"payments"', '"refunds"') + route)
    assert errors_of(tmp_path) == [
        f"b.toml: upstream.name: 'payments' is also defined in {tmp_path}/a.toml",
        "c.toml: routes.0: the same route is claimed by 'payments'",
    ]


def test_missing_node_file(tmp_path: Path) -> None:
    assert errors_of(write(tmp_path, payments=UPSTREAM)) == [
        "node.toml: the node's policy file is missing"
    ]


def test_missing_directory(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope") == [f"{tmp_path}/nope: not a directory"]


def test_not_utf8(tmp_path: Path) -> None:
    write(tmp_path, node=NODE)
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe")
    assert errors_of(tmp_path) == ["bad.toml: not UTF-8 text: invalid start byte at byte 0"]


def test_version_does_not_depend_on_where_the_directory_is(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "p")
    assert load_policies(tmp_path / "p").version == load_policies(EXAMPLES).version


def test_resilience_sections_load(tmp_path: Path) -> None:
    upstream = (
        UPSTREAM
        + """
[circuit_breaker]
failure_threshold = 3
reset_timeout = "5m"
failure_on = ["connect-failure", "5xx", "429"]

[retry]
max_retries = 4
backoff = "fibonacci"
retry_on = ["reset", "503", "unavailable"]
budget = { ratio = 0.1, min_per_second = 5 }
buffer = "1MiB"

[fallback]
on = ["circuit-open", "timeout"]
kind = "static"
status = 503
body = '{"status":"degraded"}'

[balancer]
max_connections_per_instance = 10

[rate_limit]
requests_per_second = 100
per = "client"

[chaos]
abort_percent = 1.5
delay = "200ms"
"""
    )
    policy = load_policies(write(tmp_path, node=NODE, payments=upstream)).upstreams["payments"]
    assert policy.circuit_breaker is not None and policy.circuit_breaker.reset_timeout == 300
    assert policy.retry is not None and policy.retry.buffer == 1024 * 1024
    assert policy.retry.budget.ratio == 0.1
    assert policy.fallback is not None and policy.fallback.status == 503
    assert policy.balancer.max_connections_per_instance == 10
    assert policy.rate_limit is not None and policy.rate_limit.per == "client"
    assert policy.chaos is not None and policy.chaos.delay == 0.2


def test_resilience_values_out_of_range(tmp_path: Path) -> None:
    upstream = (
        UPSTREAM
        + """
[circuit_breaker]
failure_threshold = 0
failure_on = ["teapot"]

[retry]
jitter = 1.5
retry_on = ["sometimes"]
buffer = "lots"

[fallback]
kind = "upstream"
on = ["whenever"]

[chaos]
abort_percent = 150
"""
    )
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        "payments.toml: retry.buffer: expected a size like \"64KiB\", got 'lots'",
    ]
    (tmp_path / "payments.toml").write_text(upstream.replace('buffer = "lots"\n', ""))
    assert errors_of(tmp_path) == [
        "payments.toml: circuit_breaker.failure_threshold: must be at least 1, got 0",
        "payments.toml: circuit_breaker.failure_on.0: expected one of connect-failure, "
        "refused-stream, reset, timeout, 5xx or an HTTP status, got 'teapot'",
        "payments.toml: retry.jitter: expected a fraction from 0 up to 1, got 1.5",
        "payments.toml: retry.retry_on.0: expected one of connect-failure, refused-stream, reset, "
        "timeout, an HTTP status or a gRPC status (cancelled, unknown, deadline-exceeded, "
        "resource-exhausted, aborted, internal, unavailable), got 'sometimes'",
        "payments.toml: fallback.on.0: expected one of circuit-open, no-healthy-endpoints, "
        "retries-exhausted, timeout, upstream-connect-failure, upstream-reset, bulkhead-full, "
        'rate-limited, concurrency-limited, a status from 400 to 599 ("503") or a class '
        "(\"5xx\"), got 'whenever'",
        "payments.toml: chaos.abort_percent: expected a percentage from 0 to 100, got 150",
    ]


def test_fallback_upstream_must_exist(tmp_path: Path) -> None:
    upstream = UPSTREAM + '[fallback]\nkind = "upstream"\nupstream = "backup"\n'
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        "payments.toml: fallback.upstream: no upstream is named 'backup'"
    ]


def test_queue_fallback(tmp_path: Path) -> None:
    upstream = UPSTREAM + '[fallback]\nkind = "queue"\non = ["circuit-open"]\nmax_depth = 10\n'
    plan = load_policies(write(tmp_path, node=NODE, payments=upstream)).upstreams["payments"]
    assert plan.fallback is not None
    assert (plan.fallback.methods, plan.fallback.max_depth, plan.fallback.age_limit) == (
        ("POST", "PUT"),
        10,
        86400.0,
    )


def test_node_health_checks(tmp_path: Path) -> None:
    node = (
        NODE
        + """
[[health_checks]]
name = "memory"
kind = "memory"
threshold_percent = 95

[[health_checks]]
name = "database"
kind = "tcp"
critical = true
"""
    )
    assert errors_of(write(tmp_path, node=node)) == [
        'node.toml: health_checks.1.address: required when kind is "tcp"'
    ]
    (tmp_path / "node.toml").write_text(node + 'address = "127.0.0.1:5432"\n')
    checks = load_policies(tmp_path).node.health_checks
    assert [(c.name, c.kind, c.critical) for c in checks] == [
        ("memory", "memory", False),
        ("database", "tcp", True),
    ]


def test_concurrency_limit_values_out_of_range(tmp_path: Path) -> None:
    upstream = UPSTREAM + (
        '\n[concurrency_limit]\nalgorithm = "vegas"\ninitial_limit = 0\n'
        "smoothing = 2.0\nalpha = 6.0\nbeta = 3.0\n"
    )
    assert errors_of(write(tmp_path, node=NODE, payments=upstream)) == [
        "payments.toml: concurrency_limit.initial_limit: must be at least 1, got 0",
        "payments.toml: concurrency_limit.smoothing: expected more than 0 up to 1, got 2.0",
        "payments.toml: concurrency_limit.beta: must be more than alpha (6.0), got 3.0",
    ]


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ('delay = "soon"', 'hedge.delay: expected a duration like "50ms" or a percentile'),
        ('delay = "p20"', "hedge.delay: expected a percentile from p50 up to p99.99, got p20"),
        ('delay = "0ms"', "hedge.delay: must be more than 0, got 0"),
        ("max_hedges = 0", "hedge.max_hedges: must be at least 1, got 0"),
        ("max_hedges = 9", "hedge.max_hedges: must be at most 3, got 9"),
    ],
)
def test_hedge_values_out_of_range(tmp_path: Path, section: str, error: str) -> None:
    upstream = UPSTREAM + f"\n[hedge]\n{section}\n"
    (found,) = errors_of(write(tmp_path, node=NODE, payments=upstream))
    assert found.startswith(f"payments.toml: {error}")


@pytest.mark.parametrize(
    ("written", "seconds", "percentile"), [('"50ms"', 0.05, None), ('"p99.9"', None, 99.9)]
)
def test_a_hedge_delay_is_a_duration_or_a_percentile(
    tmp_path: Path, written: str, seconds: float | None, percentile: float | None
) -> None:
    upstream = UPSTREAM + f"\n[hedge]\ndelay = {written}\n"
    hedge = load_policies(write(tmp_path, node=NODE, payments=upstream)).upstreams["payments"].hedge
    assert hedge is not None
    assert (hedge.delay.seconds, hedge.delay.percentile, hedge.max_hedges) == (
        seconds,
        percentile,
        1,
    )
    assert str(hedge.delay) == written.strip('"')

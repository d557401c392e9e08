"""Validated policy types: what the node runs on, after the files were checked.

They are frozen so a request can hold the policy it started with while a reload
swaps in another. The wire shape (TOML tables) maps onto them one to one through
the converter in ``convert.py``; defaults here are the documented defaults.
"""

from __future__ import annotations

from typing import Literal

import attrs

from meshnode.policy.units import Address, Duration, LatencyDelay, Size


@attrs.frozen
class NodeSection:
    name: str
    trust_domain: str = "mesh.local"
    state_dir: str | None = None
    drain_timeout: Duration = Duration(30)
    access_log: bool = False  # one line per request on the "meshnode.access" logger
    # How long the event loop may spin before it sleeps, while traffic flows (net/busy_poll.py):
    # CPU traded for latency on virtual machines, whose idle vCPUs are slow to wake.
    busy_poll: Duration = Duration(50e-6)
    # Upstream policies from a store the fleet shares (docs/fleet.md):
    # "etcd://host:port/prefix" or "consul://host:port/prefix". Default: the files only.
    policy_source: str | None = None


@attrs.frozen
class OutboundListener:
    address: Address = Address("127.0.0.1", 15001)


@attrs.frozen
class InboundListener:
    """mTLS from other nodes, forwarded to the service on this host."""

    local: Address
    address: Address = Address("0.0.0.0", 15443)
    local_protocol: Literal["h2", "http1"] = "h2"  # what the local service speaks
    allow: tuple[str, ...] = ()  # caller identities (spiffe://...) let in; empty: nobody
    handshake_timeout: Duration = Duration(10)


@attrs.frozen
class Listeners:
    outbound: OutboundListener = OutboundListener()
    inbound: InboundListener | None = None


@attrs.frozen
class TLSFiles:
    """The node's certificate material; relative paths are relative to node.toml."""

    ca: str
    cert: str
    key: str


@attrs.frozen
class AdminSection:
    address: Address = Address("127.0.0.1", 15000)
    # Mutating calls need "Authorization: Bearer <token>" when this is set; it must be
    # set when the admin listener is not on loopback. Relative to node.toml.
    token_file: str | None = None
    # Host names the admin listener answers to besides addresses and localhost: the
    # defence against DNS rebinding (docs/security.md).
    allowed_hosts: tuple[str, ...] = ()


@attrs.frozen
class TimeoutPolicy:
    """``request`` bounds the whole exchange, response body included; "0s" turns it off."""

    request: Duration = Duration(10)
    per_try: Duration | None = None
    # A WebSocket tunnel: ``request`` bounds only its opening; then these do.
    tunnel_idle: Duration = Duration(300)  # no bytes either way for this long: closed
    tunnel_lifetime: Duration = Duration(86400)


FAILURE_KINDS = ("connect-failure", "refused-stream", "reset", "timeout", "5xx")
RETRY_CONDITIONS = ("connect-failure", "refused-stream", "reset", "timeout")
GRPC_RETRY_STATUSES = {
    "cancelled": 1,
    "unknown": 2,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "aborted": 10,
    "internal": 13,
    "unavailable": 14,
}
# The mesh failures a [fallback] may answer instead of (every one a caller can see of an
# upstream), besides response statuses ("503", or a class: "5xx").
FALLBACK_CONDITIONS = (
    "circuit-open",
    "no-healthy-endpoints",
    "retries-exhausted",
    "timeout",
    "upstream-connect-failure",
    "upstream-reset",
    "bulkhead-full",
    "rate-limited",
    "concurrency-limited",
)


@attrs.frozen
class ConcurrencyLimitPolicy:
    """``[concurrency_limit]``: calls in flight to the upstream, the limit found from its
    latency (docs/adaptive.md; the algorithms: resilience/core/concurrency.py)."""

    algorithm: Literal["gradient2", "gradient", "vegas", "fixed"] = "vegas"
    initial_limit: int = 20
    min_limit: int = 1
    max_limit: int = 1000
    queue_timeout: Duration = Duration(0)  # over the limit: wait this long for room, or 503
    smoothing: float | None = None  # the algorithm's own: 1.0 for vegas, 0.2 for the gradients
    rtt_tolerance: float = 1.5  # gradient, gradient2
    probe_interval: int = 1000  # gradient
    long_window: int = 600  # gradient2
    queue_size: int = 4  # gradient2
    alpha: float = 3.0  # vegas
    beta: float = 6.0  # vegas
    probe_multiplier: int = 30  # vegas


DEFAULT_HEDGE_DELAY = LatencyDelay(percentile=95.0)


@attrs.frozen
class HedgePolicy:
    """``[hedge]``: a second try of an idempotent request without a body, on another
    endpoint, when the first has no response head after ``delay`` (docs/adaptive.md)."""

    delay: LatencyDelay = DEFAULT_HEDGE_DELAY
    max_hedges: int = 1


@attrs.frozen
class CircuitBreakerPolicy:
    failure_threshold: int = 5
    failure_threshold_percentage: float = 50.0
    volume_threshold: int = 10
    window: Duration = Duration(10)
    reset_timeout: Duration = Duration(30)
    half_open_max_requests: int = 3
    # connect-failure | refused-stream | reset | timeout | 5xx (except 501) | a status like "429"
    failure_on: tuple[str, ...] = ("connect-failure", "reset", "timeout", "5xx")
    slow_call_duration: Duration | None = None
    slow_call_rate_percentage: float = 100.0


@attrs.frozen
class RetryBudgetPolicy:
    ratio: float = 0.2
    min_per_second: float = 10.0


@attrs.frozen
class RetryPolicy:
    max_retries: int = 2
    initial_delay: Duration = Duration(0.1)
    max_delay: Duration = Duration(5)
    backoff: Literal["exponential", "linear", "fibonacci", "constant"] = "exponential"
    multiplier: float = 2.0
    jitter: float = 0.2
    # connect-failure | refused-stream | reset | timeout | an HTTP status | a gRPC status name
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "reset", "503")
    budget: RetryBudgetPolicy = RetryBudgetPolicy()
    retry_non_idempotent: bool = False
    buffer: Size = Size(64 * 1024)


@attrs.frozen
class FallbackPolicy:
    kind: Literal["static", "upstream", "stale-cache", "queue"]
    on: tuple[str, ...] = ("circuit-open", "no-healthy-endpoints")
    status: int = 200
    body: str = ""
    headers: dict[str, str] = attrs.field(factory=dict)
    upstream: str | None = None
    max_age: Duration | None = None  # stale-cache: 10 minutes; queue: 24 hours
    max_entries: int = 1000
    # queue: which requests may be stored and replayed, and the queue's bounds
    methods: tuple[str, ...] = ("POST", "PUT")
    paths: tuple[str, ...] = ()  # path prefixes; empty: every path
    max_depth: int = 10_000
    max_bytes: Size = Size(64 * 1024 * 1024)
    max_body: Size = Size(1024 * 1024)
    max_attempts: int = 20

    @property
    def age_limit(self) -> float:
        """``max_age``, or its default for the kind."""
        if self.max_age is not None:
            return float(self.max_age)
        return 86400.0 if self.kind == "queue" else 600.0


@attrs.frozen
class SessionAffinity:
    """Stick a client to one endpoint: keyed by a header, or by a cookie's value."""

    header: str | None = None
    cookie: str | None = None
    ttl: Duration = Duration(1800)
    max_sessions: int = 100_000


@attrs.frozen
class BalancerPolicy:
    strategy: Literal[
        "round-robin",
        "least-connections",
        "weighted-round-robin",
        "least-response-time",
        "ip-hash",
        "random",
    ] = "round-robin"
    max_connections_per_instance: int = 1024
    max_pending: int = 1024
    queue_timeout: Duration = Duration(1)
    session_affinity: SessionAffinity | None = None
    # Below this share of usable endpoints, balance over all of them (Envoy's panic mode).
    panic_threshold: float = 50.0


@attrs.frozen
class HealthCheckPolicy:
    kind: Literal["http", "tcp", "grpc"] = "http"
    path: str = "/health"
    expected_status: tuple[int, int] = (200, 399)  # inclusive range
    grpc_service: str = ""
    interval: Duration = Duration(3)
    jitter: float = 0.1
    timeout: Duration = Duration(1)
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


@attrs.frozen
class OutlierDetectionPolicy:
    consecutive_failures: int = 5
    base_ejection_time: Duration = Duration(30)
    max_ejection_time: Duration = Duration(300)
    max_ejection_percent: float = 50.0


@attrs.frozen
class RateLimitPolicy:
    requests_per_second: float
    burst: int | None = None  # default: one second's worth
    per: Literal["upstream", "client"] = "upstream"
    client_header: str = "x-client-id"
    max_clients: int = 10_000


@attrs.frozen
class ChaosPolicy:
    abort_percent: float = 0.0
    abort_status: int = 503
    delay_percent: float = 0.0
    delay: Duration = Duration(0)
    header_faults: bool = False


@attrs.frozen
class UpstreamDefaults:
    """The ``[defaults]`` table of node.toml: upstream sections that every upstream inherits."""

    timeout: TimeoutPolicy | None = None
    balancer: BalancerPolicy | None = None
    health_check: HealthCheckPolicy | None = None
    outlier_detection: OutlierDetectionPolicy | None = None
    circuit_breaker: CircuitBreakerPolicy | None = None
    retry: RetryPolicy | None = None
    rate_limit: RateLimitPolicy | None = None
    fallback: FallbackPolicy | None = None
    chaos: ChaosPolicy | None = None


@attrs.frozen
class NodeHealthCheck:
    """One of the node's own ``[[health_checks]]`` (the seed's HealthCheckManager)."""

    name: str
    kind: Literal["memory", "disk", "tcp", "http", "command"]
    type: Literal["liveness", "readiness"] = "readiness"
    critical: bool = False
    threshold_percent: float = 90.0  # memory, disk: unhealthy at or above this use
    path: str = "/"  # disk
    address: Address | None = None  # tcp
    url: str | None = None  # http: 2xx or 3xx is healthy
    command: tuple[str, ...] = ()  # command: exit 0 is healthy
    interval: Duration = Duration(10)
    timeout: Duration = Duration(5)
    failure_threshold: int = 1
    success_threshold: int = 1


@attrs.frozen
class FrameRates:
    """Per connection, frames a peer may send per second, on average over ten seconds.

    Each kind is a token bucket holding ten seconds' worth (a burst) and refilled
    at this rate; WINDOW_UPDATE also earns ten frames for every DATA frame sent,
    as Envoy does, so a fast download never trips it. Past a budget the
    connection ends with GOAWAY ENHANCE_YOUR_CALM.
    """

    ping: float = 50
    settings: float = 10
    priority: float = 200
    window_update: float = 1000
    resets_received: float = 200  # Rapid Reset (CVE-2023-44487)
    resets_sent: float = 100  # resets the peer provoked: MadeYouReset (CVE-2025-8671)


@attrs.frozen
class Limits:
    """What one peer may cost: ``[limits]`` in node.toml, on every listener and upstream.

    Defaults follow Envoy's edge guide and nginx; docs/hardening.md says what a
    peer sees when it crosses each one.
    """

    max_concurrent_streams: int = 100
    max_header_list_size: Size = Size(64 * 1024)
    max_header_count: int = 100
    max_header_field_size: Size = Size(8 * 1024)  # one field, name and value (nginx's 8k)
    max_frame_size: int = 16384
    stream_window: Size = Size(256 * 1024)
    connection_window: Size = Size(1024 * 1024)
    write_buffer: Size = Size(256 * 1024)  # queued for one connection's socket before senders wait
    max_request_body: Size | None = None  # none: bodies stream through unbounded
    max_connections: int = 10000  # per listener; past it the listener stops accepting
    max_requests_per_connection: int = 0  # 0: no limit; else a graceful GOAWAY after this many
    headers_with_underscores: Literal["reject", "drop", "allow"] = "reject"
    max_consecutive_empty_frames: int = 1
    frame_rates: FrameRates = FrameRates()
    header_timeout: Duration = Duration(10)  # a started frame or header block must complete
    first_request_timeout: Duration = Duration(30)
    idle_timeout: Duration = Duration(3600)  # a connection with no stream open
    settings_timeout: Duration = Duration(10)
    stream_idle_timeout: Duration = Duration(300)  # a stream waiting on its peer
    overload_memory: Size | None = None  # resident memory past which new work is shed


@attrs.frozen
class FleetPolicy:
    """``[fleet]``: how the node reaches its ``policy_source`` and registers there."""

    ca_file: str | None = None  # https to etcd or Consul, checked against this CA
    cert_file: str | None = None  # etcd: the node's client certificate...
    key_file: str | None = None  # ...and its key
    token_file: str | None = None  # Consul: the ACL token, read from this file
    registry_ttl: Duration = Duration(10)  # a node silent this long leaves the fleet


@attrs.frozen
class TracingPolicy:
    """``[tracing]``: spans out over OTLP/HTTP, trace context on every hop (docs/tracing.md)."""

    endpoint: str  # the collector's OTLP/HTTP base URL ("/v1/traces" is added) or full URL
    # Requests that arrive without a trace context start a sampled trace at this ratio; one
    # that brings a context keeps the caller's decision (parent-based sampling).
    sample_ratio: float = 0.01
    service_name: str | None = None  # default: the node's [node] name
    # Read from the first that a request carries; all of them written: "tracecontext" (W3C),
    # "b3" (the single b3 header), "b3multi" (x-b3-*).
    propagation: tuple[str, ...] = ("tracecontext",)
    max_queued_spans: int = 2048  # finished spans waiting for export; more are dropped, counted
    export_timeout: Duration = Duration(10)


@attrs.frozen
class NodePolicy:
    node: NodeSection
    listeners: Listeners = Listeners()
    admin: AdminSection = AdminSection()
    tls: TLSFiles | None = None
    defaults: UpstreamDefaults = UpstreamDefaults()
    health_checks: tuple[NodeHealthCheck, ...] = ()
    limits: Limits = Limits()
    tracing: TracingPolicy | None = None
    fleet: FleetPolicy = FleetPolicy()


@attrs.frozen
class UpstreamSection:
    name: str
    tls: Literal["mesh", "none"] = "mesh"
    protocol: Literal["h2", "http1"] = "h2"  # http1: cleartext HTTP/1.1, keep-alive pooled
    critical: bool = False
    # tls = "mesh": the identity the upstream must present; default
    # spiffe://<trust_domain>/service/<name>.
    expected_identity: str | None = None
    # h2: retire each connection after this many requests, before the upstream's own limit
    # would make it send GOAWAY (0: none set; a limit the upstream shows is learned).
    max_requests_per_connection: int = 0

    def identity(self, trust_domain: str) -> str | None:
        """The identity a ``tls = "mesh"`` upstream must present; None for cleartext."""
        if self.tls != "mesh":
            return None
        return self.expected_identity or f"spiffe://{trust_domain}/service/{self.name}"


@attrs.frozen
class Route:
    """Extra traffic for an upstream: every given condition must hold."""

    authority: str | None = None
    path_prefix: str = "/"
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Endpoint:
    address: Address
    weight: int = 1
    zone: str | None = None
    metadata: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class StaticDiscovery:
    backend: Literal["static"] = "static"
    endpoints: tuple[Endpoint, ...] = ()
    refresh_interval: Duration = Duration(15)  # accepted for symmetry; nothing to refresh


@attrs.frozen
class FileDiscovery:
    """A JSON list (or a TOML file with ``endpoints = [...]``) shaped like ``endpoints``."""

    path: str  # relative to the policies directory
    backend: Literal["file"] = "file"
    refresh_interval: Duration = Duration(1)  # how often the file is looked at


@attrs.frozen
class DNSDiscovery:
    """SRV records when ``port`` is absent, else A/AAAA records with that port."""

    name: str
    backend: Literal["dns"] = "dns"
    port: int | None = None
    resolver: Address | None = None  # default: the system's resolvers
    refresh_interval: Duration = Duration(15)  # the TTL's ceiling
    min_ttl: Duration = Duration(5)  # the TTL's floor


@attrs.frozen
class ConsulDiscovery:
    backend: Literal["consul"] = "consul"
    consul_url: str = "http://127.0.0.1:8500"
    service: str | None = None  # default: the upstream's name
    tag: str | None = None
    datacenter: str | None = None
    token_file: str | None = None  # the ACL token, relative to the policies directory
    ca_file: str | None = None  # for an https consul_url with a private CA
    wait: Duration = Duration(300)  # how long one blocking query may wait
    refresh_interval: Duration = Duration(15)


@attrs.frozen
class KubernetesDiscovery:
    backend: Literal["kubernetes"] = "kubernetes"
    namespace: str = "default"
    service: str | None = None  # default: the upstream's name
    port: str | int | None = None  # a port name or number; default: the slice's only port
    kubeconfig: str | None = None  # default: in-cluster (service account)
    service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    refresh_interval: Duration = Duration(30)


@attrs.frozen
class EtcdDiscovery:
    backend: Literal["etcd"] = "etcd"
    etcd_url: str = "http://127.0.0.1:2379"
    prefix: str | None = None  # default: /meshnode/services/<upstream>/
    refresh_interval: Duration = Duration(15)


Discovery = (
    StaticDiscovery
    | FileDiscovery
    | DNSDiscovery
    | ConsulDiscovery
    | KubernetesDiscovery
    | EtcdDiscovery
)
DISCOVERY_BACKENDS: dict[str, type[Discovery]] = {
    "static": StaticDiscovery,
    "file": FileDiscovery,
    "dns": DNSDiscovery,
    "consul": ConsulDiscovery,
    "kubernetes": KubernetesDiscovery,
    "etcd": EtcdDiscovery,
}


@attrs.frozen
class UpstreamPolicy:
    upstream: UpstreamSection
    discovery: Discovery
    routes: tuple[Route, ...] = ()
    timeout: TimeoutPolicy = TimeoutPolicy()
    balancer: BalancerPolicy = BalancerPolicy()
    health_check: HealthCheckPolicy | None = None  # absent: no active probing
    outlier_detection: OutlierDetectionPolicy | None = None  # absent: no passive ejection
    circuit_breaker: CircuitBreakerPolicy | None = None  # absent: no breaker
    retry: RetryPolicy | None = None  # absent: only never-processed requests are sent again
    rate_limit: RateLimitPolicy | None = None
    fallback: FallbackPolicy | None = None
    chaos: ChaosPolicy | None = None
    concurrency_limit: ConcurrencyLimitPolicy | None = None  # absent: no adaptive limit
    hedge: HedgePolicy | None = None  # absent: no hedged requests

    @property
    def name(self) -> str:
        return self.upstream.name

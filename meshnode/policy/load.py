"""Read a policies directory into a validated ``PolicySet``, or list every error.

Every problem of every file is collected before giving up, each as
``file: key.path: reason``, so an operator fixes a directory in one pass. The
directory is read once into memory first, so the set that is validated is the
set that is versioned (a file changed mid-read is caught by the next reload).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from meshnode.policy.checks import (
    check_limits,
    check_node_settings,
    check_resilience,
    check_tracing,
)
from meshnode.policy.convert import converter, error_lines
from meshnode.policy.models import Discovery, NodePolicy, StaticDiscovery, UpstreamPolicy

NODE_FILE = "node.toml"
# With [node] policy_source, the upstream files the fleet's store holds, as the node last
# took them: a symlink to a whole snapshot directory, swapped in one rename (fleet/).
FLEET_DIR = "fleet"

_UPSTREAM_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


class PolicyError(Exception):
    """A policies directory that cannot be used; ``lines`` holds every problem found."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@attrs.frozen
class PolicySet:
    directory: Path
    node: NodePolicy
    upstreams: Mapping[str, UpstreamPolicy]
    version: str  # a content hash of every file, so two nodes can compare what they run
    files: Mapping[str, str]  # upstream name -> the file that defines it
    fingerprint: Fingerprint = ()  # the files' identities when they were read (see reload)
    local: UpstreamPolicy | None = None  # the inbound listener's service on this host

    @property
    def uses_queue(self) -> bool:
        """Whether any upstream (the local service included) has a queue fallback."""
        policies = [*self.upstreams.values(), *([self.local] if self.local is not None else [])]
        return any(p.fallback is not None and p.fallback.kind == "queue" for p in policies)


LOCAL = "(local)"  # the name of the inbound listener's local service, in reports and metrics


Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint:
    """Identity, size and mtime of every ``*.toml`` file, following symlinks.

    Cheap enough to poll: edits, new and deleted files, a rename over a file
    and a swapped ``..data`` symlink (Kubernetes ConfigMaps) all change it.
    """
    names = _toml_names(directory)
    names += [f"{FLEET_DIR}/{name}" for name in _toml_names(directory / FLEET_DIR)]
    entries = []
    for name in names:
        try:
            info = os.stat(directory / name)
        except OSError:
            continue  # a dangling symlink mid-swap: the next poll sees the settled state
        entries.append((name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(entries)


def content_version(files: Iterable[tuple[str, bytes]]) -> str:
    """A short hash of files (name, content), in the order given: what a node reports as
    its policy version, and a fleet version names a pushed set of upstream files by."""
    digest = hashlib.sha256()
    for name, text in files:
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()[:16]


def _toml_names(directory: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if name.endswith(".toml"))
    except OSError:
        return []


def load_policies(directory: Path | str) -> PolicySet:
    """Read, parse and validate every ``*.toml`` file of ``directory`` (and of its
    ``fleet/`` snapshot, when the fleet's store fills one)."""
    directory = Path(directory)
    errors: list[str] = []
    seen = fingerprint(directory)
    sources = _read_sources(directory, errors)
    sources.update(_read_sources(directory / FLEET_DIR, errors, required=False))
    return _policy_set(directory, sources, errors, seen)


def check_snapshot(directory: Path, files: Mapping[str, bytes]) -> PolicySet:
    """The policies ``directory`` would hold with ``files`` (name -> content) as its fleet
    snapshot: validated in memory, before anything touches the disk."""
    errors: list[str] = []
    sources = _read_sources(directory, errors)
    sources.update({directory / FLEET_DIR / name: text for name, text in sorted(files.items())})
    return _policy_set(directory, sources, errors, ())


def _policy_set(
    directory: Path, sources: dict[Path, bytes], errors: list[str], seen: Fingerprint
) -> PolicySet:

    node_path = directory / NODE_FILE
    node: NodePolicy | None = None
    defaults: dict[str, Any] = {}
    if node_path not in sources:
        if node_path.exists() or not errors:
            errors.append(f"{node_path}: the node's policy file is missing")
    else:
        raw = _parse(node_path, sources[node_path], errors)
        if raw is not None:
            node, defaults = _node_policy(node_path, raw, errors)

    upstreams: dict[str, UpstreamPolicy] = {}
    files: dict[str, str] = {}
    for path, text in sources.items():
        if path == node_path:
            continue
        raw = _parse(path, text, errors)
        if raw is None:
            continue
        policy = _upstream_policy(path, _merged(defaults, raw), errors)
        if policy is None:
            continue
        if policy.name in upstreams:
            errors.append(
                f"{path}: upstream.name: {policy.name!r} is also defined in {files[policy.name]}"
            )
            continue
        upstreams[policy.name] = policy
        files[policy.name] = str(path)

    errors.extend(_route_conflicts(upstreams, files))
    errors.extend(_fallback_targets(upstreams, files))
    local = None
    if node is not None:
        errors.extend(_identity_checks(node_path, node, upstreams, files))
        local = _local_policy(node_path, node, defaults, errors)
    if errors or node is None:
        raise PolicyError(errors)
    version = content_version((path.name, text) for path, text in sources.items())
    return PolicySet(directory, node, upstreams, version, files, seen, local)


def _read_sources(
    directory: Path, errors: list[str], *, required: bool = True
) -> dict[Path, bytes]:
    if not directory.is_dir():
        if required:
            errors.append(f"{directory}: not a directory")
        return {}
    sources = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            sources[path] = path.read_bytes()
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc.strerror or exc}")
    return sources


def _parse(path: Path, text: bytes, errors: list[str]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        errors.append(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}")
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"{path}: TOML syntax: {exc}")
    return None


def _node_policy(
    path: Path, raw: dict[str, Any], errors: list[str]
) -> tuple[NodePolicy | None, dict[str, Any]]:
    defaults = raw.get("defaults", {})
    policy = _structure(path, raw, NodePolicy, errors)
    if policy is not None:
        errors.extend(f"{path}: {line}" for line in _node_checks(path, policy))
    return policy, defaults if policy is not None else {}


def _health_check_problems(policy: NodePolicy) -> Iterator[str]:
    needs = {"tcp": "address", "http": "url", "command": "command"}
    for index, check in enumerate(policy.health_checks):
        key = needs.get(check.kind)
        if key is not None and not getattr(check, key):
            yield f'health_checks.{index}.{key}: required when kind is "{check.kind}"'


def _node_checks(path: Path, policy: NodePolicy) -> Iterator[str]:
    yield from _health_check_problems(policy)
    yield from (f"{key}: {reason}" for key, reason in check_node_settings(policy.node))
    yield from (f"{key}: {reason}" for key, reason in check_limits(policy.limits))
    yield from (f"{key}: {reason}" for key, reason in check_tracing(policy.tracing))
    admin = policy.admin
    if admin.token_file is None:
        if not is_loopback(admin.address.host):
            yield (
                "admin.token_file: required when the admin listener is not on loopback "
                f"({admin.address})"
            )
        return
    try:
        token = read_token(path.parent, admin.token_file)
    except OSError as exc:
        yield f"admin.token_file: cannot read {admin.token_file}: {exc.strerror or exc}"
        return
    if not token:
        yield f"admin.token_file: {admin.token_file} is empty"


def read_token(directory: Path, token_file: str) -> str:
    """The admin token: the file's content, surrounding whitespace removed."""
    return (directory / token_file).read_text().strip()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _upstream_policy(path: Path, raw: dict[str, Any], errors: list[str]) -> UpstreamPolicy | None:
    before = len(errors)
    policy = _structure(path, raw, UpstreamPolicy, errors)
    if policy is None or len(errors) > before:
        return None
    policy = attrs.evolve(policy, discovery=_anchored(policy.discovery, path.parent))
    name = policy.upstream.name
    if not _UPSTREAM_NAME.match(name):
        errors.append(
            f"{path}: upstream.name: {name!r} must be a lowercase host name "
            "(letters, digits, '-' and '.'), since it is matched against :authority"
        )
    discovery = policy.discovery
    if isinstance(discovery, StaticDiscovery) and not discovery.endpoints:
        errors.append(f"{path}: discovery.endpoints: a static upstream needs at least one endpoint")
    for index, route in enumerate(policy.routes):
        if not route.path_prefix.startswith("/"):
            errors.append(f"{path}: routes.{index}.path_prefix: must start with '/'")
    errors.extend(f"{path}: {key}: {reason}" for key, reason in check_resilience(policy))
    return policy if len(errors) == before else None


_DISCOVERY_FILES = ("path", "token_file", "ca_file", "kubeconfig", "service_account_dir")


def _anchored(discovery: Discovery, directory: Path) -> Discovery:
    """The discovery section with its file names made absolute (relative to the policies)."""
    changes: dict[str, Any] = {
        name: str(directory / value)
        for name in _DISCOVERY_FILES
        if isinstance(value := getattr(discovery, name, None), str)
    }
    return attrs.evolve(discovery, **changes) if changes else discovery


def _structure(path: Path, raw: dict[str, Any], kind: type[Any], errors: list[str]) -> Any:
    try:
        return converter.structure(raw, kind)
    except Exception as exc:  # cattrs raises groups of any leaf error; all of them are reported
        errors.extend(f"{path}: {key}: {reason}" for key, reason in error_lines(exc))
        return None


def _merged(defaults: Mapping[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Apply node.toml's ``[defaults]`` under an upstream file, key by key within a section."""
    merged = dict(raw)
    for section, values in defaults.items():
        own = raw.get(section)
        if isinstance(values, dict) and isinstance(own, dict):
            merged[section] = {**values, **own}
        elif section not in raw:
            merged[section] = values
    return merged


def _route_conflicts(
    upstreams: Mapping[str, UpstreamPolicy], files: Mapping[str, str]
) -> Iterator[str]:
    claimed: dict[tuple[object, ...], str] = {}
    for name, policy in upstreams.items():
        for index, route in enumerate(policy.routes):
            key = (route.authority, route.path_prefix, tuple(sorted(route.headers.items())))
            other = claimed.setdefault(key, name)
            if other != name:
                yield f"{files[name]}: routes.{index}: the same route is claimed by {other!r}"


def _fallback_targets(
    upstreams: Mapping[str, UpstreamPolicy], files: Mapping[str, str]
) -> Iterator[str]:
    for name, policy in upstreams.items():
        fallback = policy.fallback
        if fallback is None or fallback.kind != "upstream":
            continue
        if fallback.upstream is None:
            yield f'{files[name]}: fallback.upstream: required when kind is "upstream"'
        elif fallback.upstream == name:
            yield f"{files[name]}: fallback.upstream: an upstream cannot be its own fallback"
        elif fallback.upstream not in upstreams:
            yield f"{files[name]}: fallback.upstream: no upstream is named {fallback.upstream!r}"


def _identity_checks(
    node_path: Path,
    node: NodePolicy,
    upstreams: Mapping[str, UpstreamPolicy],
    files: Mapping[str, str],
) -> Iterator[str]:
    inbound = node.listeners.inbound
    if node.tls is None:
        if inbound is not None:
            yield f"{node_path}: listeners.inbound: needs [tls] (ca, cert, key) in this file"
        for name, policy in upstreams.items():
            if policy.upstream.tls == "mesh":
                yield (
                    f'{files[name]}: upstream.tls: "mesh" needs [tls] (ca, cert, key) in '
                    f'{node_path}; or set tls = "none" for a cleartext upstream'
                )
    if inbound is not None:
        for index, identity in enumerate(inbound.allow):
            if not identity.startswith("spiffe://"):
                yield (
                    f"{node_path}: listeners.inbound.allow.{index}: expected a spiffe:// "
                    f"identity, got {identity!r}"
                )
    for name, policy in upstreams.items():
        expected = policy.upstream.expected_identity
        if expected is not None and not expected.startswith("spiffe://"):
            yield (
                f"{files[name]}: upstream.expected_identity: expected a spiffe:// identity, "
                f"got {expected!r}"
            )


def _local_policy(
    node_path: Path, node: NodePolicy, defaults: Mapping[str, Any], errors: list[str]
) -> UpstreamPolicy | None:
    """The inbound listener's local service as an upstream, with the node's [defaults]."""
    inbound = node.listeners.inbound
    if inbound is None:
        return None
    raw = {
        "upstream": {"name": LOCAL, "tls": "none", "protocol": inbound.local_protocol},
        "discovery": {"endpoints": [str(inbound.local)]},
    }
    policy = _structure(node_path, _merged(defaults, raw), UpstreamPolicy, errors)
    return policy if isinstance(policy, UpstreamPolicy) else None

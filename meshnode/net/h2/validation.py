"""Request header validation: one pass, done once, where the request arrives.

h2's inbound validation (the library meshnode used before its own codec) makes
every malformed request a connection error (GOAWAY), and a mesh
connection carries many callers' streams: RFC 9113 section 8.1.1 lets a
malformed request be a stream error, so this module finds everything h2 would
have found, plus what SECURITY-NOTES lists that h2 never checks, and the
session answers that one stream (400, or 431 for too many fields).

Field values may hold HTAB inside (RFC 9110 section 5.5), never at either end.

Host is normalized (RFC 9113 section 8.3.1): a ``host`` field goes on as
``:authority`` (the one place an HTTP/2 server looks), and a request with more
than one, or one that disagrees with ``:authority``, is refused (RFC 9110
section 7.2): a strict upstream would fail the whole connection for it, every
other caller's streams on it included.

A proxy sees the same few fields all day (user-agent, content-type, server):
an ordinary field found valid is remembered (a bounded set), and next time
costs one lookup instead of two regular expressions. A connection's callers often
repeat a whole request (the same fields in the same order), and an upstream its
answers: ``LastChecked`` keeps the last one's verdict, and a repeat costs one
comparison; every check itself is pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial
from typing import Generic, Literal, TypeVar, cast

import attrs

from meshnode.net.credentials import CREDENTIAL_FIELDS
from meshnode.net.process_cache import ProcessCache
from meshnode.policy.models import Limits

Headers = list[tuple[bytes, bytes]]
Verdict = TypeVar("Verdict")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+\Z")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")  # a token, lowercase (RFC 9113 8.2.1)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\A[ \t]|[ \t]\Z")
_PATH = re.compile(rb"/[\x21-\x7e]*\Z")
_AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+\Z")  # host[:port], no userinfo
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
WEBSOCKET = (b":protocol", b"websocket")  # an extended CONNECT (RFC 8441): a WebSocket tunnel
UnderscoreRule = Literal["reject", "drop", "allow"]
REMEMBERED_FIELDS = 4096
# Valid fields that need no rule but their own: a lowercase token name without an
# underscore, not connection-specific, not te or host, and a clean value.
_known_valid: ProcessCache[tuple[bytes, bytes], None] = ProcessCache(REMEMBERED_FIELDS)
_NOT_REMEMBERED = frozenset({b"te", b"host"}) | CREDENTIAL_FIELDS


@attrs.frozen
class Malformed:
    """Why a request was refused, and the status that says so."""

    status: int
    reason: str


class LastChecked(Generic[Verdict]):
    """A pure ``check`` of header lists, for one connection's lists: a list equal to the
    last one checked gets the same verdict without the pass. Only a verdict that holds
    none of the last list's fields is kept (the fields as they came, or why not, or a
    response's problem): a rewritten list (host, underscores) carries each field's own
    never-indexed mark."""

    def __init__(self, check: Callable[[Headers], Verdict]) -> None:
        self._check = check
        self._fields: Headers | None = None  # a copy: the checked list goes on to a stream
        self._as_they_came = False  # the verdict was the fields themselves
        self._verdict: Verdict | None = None

    def __call__(self, headers: Headers) -> Verdict:
        if headers == self._fields:
            if self._as_they_came:  # this list, not the last one: its fields' own marks
                return cast(Verdict, headers)
            return cast(Verdict, self._verdict)
        verdict = self._check(headers)
        if isinstance(verdict, list) and verdict is not headers:
            self._fields = None
        else:
            self._fields, self._as_they_came = headers.copy(), verdict is headers
            self._verdict = None if self._as_they_came else verdict
        return verdict


def request_checks(limits: Limits) -> LastChecked[Headers | Malformed]:
    """``check_request_within`` for one connection's requests under its fixed ``[limits]``."""
    return LastChecked(partial(check_request_within, limits=limits))


def response_checks() -> LastChecked[str | None]:
    """``check_response`` for one connection's answers: an upstream repeats its heads too
    (``date`` moves once a second)."""
    return LastChecked(check_response)


def check_request_within(headers: Headers, limits: Limits) -> Headers | Malformed:
    """``check_request`` with a listener's ``[limits]``."""
    return check_request(
        headers,
        max_count=limits.max_header_count,
        underscores=limits.headers_with_underscores,
        max_field_size=int(limits.max_header_field_size),
    )


def check_request(
    headers: Headers,
    *,
    max_count: int,
    underscores: UnderscoreRule,
    max_field_size: float = math.inf,
) -> Headers | Malformed:
    """The request's headers to use (underscore names dropped if so configured), or why not."""
    if len(headers) > max_count:
        return Malformed(431, f"{len(headers)} header fields, more than {max_count}")
    pseudo: dict[bytes, bytes] = {}
    regular = False
    dropped = False
    host = None
    for field in headers:
        name = field[0]
        if name[:1] == b":":
            value = field[1]
            if _BAD_VALUE.search(value):
                return Malformed(400, f"invalid characters in the value of {_show(name)}")
            if regular:
                return Malformed(400, f"pseudo-header {_show(name)} after a regular field")
            if name not in _REQUEST_PSEUDO:
                return Malformed(400, f"pseudo-header {_show(name)} is not a request's")
            if name in pseudo:
                return Malformed(400, f"pseudo-header {_show(name)} repeated")
            pseudo[name] = value
            continue
        regular = True
        if len(name) + len(field[1]) > max_field_size:  # before it could be remembered
            return Malformed(431, f"field {_show(name)} is over {max_field_size:g} bytes")
        problem = _field_problem(field)
        if problem is not None:
            return Malformed(400, problem)
        if name == b"host":
            if host is not None:
                return Malformed(400, "host repeated")
            host = field[1]
        if b"_" in name:
            if underscores == "reject":
                return Malformed(400, f"field name {_show(name)} has an underscore")
            dropped = dropped or underscores == "drop"
    problem = _check_pseudo(pseudo, host)
    if problem is not None:
        return Malformed(400, problem)
    if dropped:
        headers = [(name, value) for name, value in headers if b"_" not in name]
    if host is not None:
        return _host_as_authority(headers, host, b":authority" in pseudo)
    return headers


def _host_as_authority(headers: Headers, host: bytes, has_authority: bool) -> Headers:
    """``headers`` without ``host``, and with ``:authority`` from it if there was none
    (after the other pseudo-headers, which come first)."""
    out = [field for field in headers if field[0] != b"host"]
    if not has_authority:
        pseudo_end = next(
            (index for index, field in enumerate(out) if field[0][:1] != b":"), len(out)
        )
        out.insert(pseudo_end, (b":authority", host))
    return out


def check_response(headers: Headers) -> str | None:
    """Why a response head is malformed (what h2's client-side validation finds), or None:
    checked in one pass, since h2's own takes a chain of generators per field."""
    status = None
    regular = False
    for field in headers:
        name = field[0]
        if name[:1] == b":":
            if regular or name != b":status" or status is not None:
                return f"pseudo-header {_show(name)} out of place in a response"
            status = field[1]
            continue
        regular = True
        problem = _field_problem(field)
        if problem is not None:
            return problem
    if status is None or len(status) != 3 or not status.isdigit():
        return "no valid :status"
    return None


def check_trailers(headers: Headers) -> str | None:
    """Why a trailer section is malformed, or None."""
    for field in headers:
        if field[0][:1] == b":":
            return f"pseudo-header {_show(field[0])} in trailers"
        problem = _field_problem(field)
        if problem is not None:
            return problem
    return None


def _field_problem(field: tuple[bytes, bytes]) -> str | None:
    """Why an ordinary (not pseudo) field is malformed, or None: the rules every header
    section shares. A field found valid is remembered, unless a caller still has rules of
    its own for it (te, host, names with an underscore) or it is a credential
    (``net/credentials.py``)."""
    if field in _known_valid:
        return None
    name, value = field
    if _BAD_VALUE.search(value):
        return f"invalid characters in the value of {_show(name)}"
    if not _NAME.match(name):
        return f"invalid field name {_show(name)}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific field {_show(name)}"
    if name == b"te" and value != b"trailers":
        return "te other than trailers"
    if name not in _NOT_REMEMBERED and b"_" not in name:
        _known_valid.remember(field, None)
    return None


def _check_pseudo(pseudo: dict[bytes, bytes], host: bytes | None) -> str | None:
    method = pseudo.get(b":method")
    if method is None:
        return "no :method"
    if not _TOKEN.match(method):
        return "invalid :method"
    authority = pseudo.get(b":authority", host)  # host is to become :authority
    if authority is not None and not _AUTHORITY.match(authority):
        return "invalid :authority (userinfo, spaces or other characters a host cannot have)"
    if authority is not None and host is not None and host != authority:
        return "host and :authority differ"
    protocol = pseudo.get(b":protocol")
    if method == b"CONNECT" and protocol is None:
        return "CONNECT tunnels are not proxied (only WebSocket, by extended CONNECT)"
    if protocol is not None and (method != b"CONNECT" or protocol != b"websocket"):
        return ":protocol other than websocket on a CONNECT"
    scheme = pseudo.get(b":scheme")
    if scheme not in (b"http", b"https"):
        return "no :scheme" if scheme is None else ":scheme other than http or https"
    path = pseudo.get(b":path")
    if path is None or not path:
        return "no :path"
    if path == b"*":
        return None if method == b"OPTIONS" else ":path * is only for OPTIONS"
    if not _PATH.match(path) or b"#" in path:
        return ":path must start with / and hold no spaces, controls or fragment"
    return None


def _show(name: bytes) -> str:
    return repr(name.decode("latin-1"))[1:-1][:64]

"""The access log: one line per request, never a body or a header value that may hold secrets."""

from __future__ import annotations

import logging

import trio

from meshnode.proxy.request import Request

log = logging.getLogger("meshnode.access")


def access_fields(request: Request) -> dict[str, object]:
    group = request.group
    core = group.breaker.core if group is not None else None
    return {
        "method": request.method.decode("latin-1"),
        "authority": request.authority.decode("latin-1"),
        "path": request.path.decode("latin-1"),
        "status": request.stream.status_sent,
        "upstream": group.name if group is not None else None,
        "endpoint": str(request.endpoint) if request.endpoint is not None else None,
        "duration_ms": round((trio.current_time() - request.started) * 1000, 3),
        "tries": request.tries,
        "breaker": core.state.value if core is not None else None,
        "request_id": request.request_id.decode("latin-1") if request.request_id else None,
        "error": request.error,
    }


def log_access(request: Request) -> None:
    """A request observer: with the JSON log format the fields arrive as fields."""
    fields = access_fields(request)
    log.info(
        "%(method)s %(authority)s%(path)s %(status)s upstream=%(upstream)s endpoint=%(endpoint)s "
        "%(duration_ms)sms tries=%(tries)s breaker=%(breaker)s id=%(request_id)s error=%(error)s",
        fields,
        extra={"access": fields},
    )

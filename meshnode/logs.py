"""Logging set-up: human lines (the default) or JSON lines, one object per record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["human", "json"]


class JSONFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}``, plus an access record's fields as they are."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, log_format: LogFormat = "human") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # h2 and hpack log every frame at DEBUG; only meshnode's own debug lines are wanted.
    for chatty in ("h2", "hpack", "hpack.hpack", "hpack.table"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))

"""One log line of the worker's schema (services.core.logs), with the standard library only:
for PID 1, whose contract allows nothing else, and the time stamp every format shares."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any


def stamp(created: float) -> str:
    """RFC 3339, UTC, milliseconds: 2026-12-05T11:07:13.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write(
    program: str,
    message: str,
    log_format: str,
    level: str = "INFO",
    stream: IO[str] | None = None,
    **fields: Any,
) -> None:
    """`<ts> [program] message`, or the JSON object with `event` (the program's, unless given)."""
    now = stamp(time.time())
    if log_format == "json":
        line = json.dumps(
            {"ts": now, "level": level, "msg": message, "program": program, "event": program, **fields}
        )
    else:
        line = f"{now} [{program}] {message}"
    out = stream or sys.stderr
    out.write(line + "\n")
    out.flush()

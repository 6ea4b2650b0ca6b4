"""SIGHUP at PID 1: API_KEYS_FILE is read now and what is in force is said in one line.

Every API process already reads the file again at its next request once it changed
(services.jobs.access), so a SIGHUP restarts nothing: supervisord's own reload, which SIGHUP used
to reach, restarted every program and cut every job.

Usage: python -m services.container.keys_check API_KEYS_FILE LOG_FORMAT
"""

from __future__ import annotations

import sys

from services.core import log_line
from services.core.config import ConfigError
from services.jobs import access


def main(argv: list[str]) -> int:
    path, log_format = argv
    try:
        _seen, keys = access.read(path)
    except ConfigError as exc:
        log_line.write(
            "entrypoint", f"SIGHUP: {exc}; the keys in force stay", log_format, "ERROR", event="supervise"
        )
        return 1
    names = sorted(key.name for key in keys.values())
    log_line.write(
        "entrypoint",
        f"SIGHUP: API_KEYS_FILE holds {len(names)} key(s) ({', '.join(names)}); "
        "each API process uses them from its next request, nothing restarts",
        log_format,
        event="supervise",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

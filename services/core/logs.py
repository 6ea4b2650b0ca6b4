"""Log set-up shared by the worker's programs: one line per event on stdout (direct lines of
the programs that print, such as the entrypoint's, on stderr), in the format LOG_FORMAT names.

    text   `<ts> [<program>] <LEVEL> <logger>: <msg>` (a direct line: `<ts> [<program>] <msg>`)
    json   one object per line, written by python-json-logger: `ts` (RFC 3339, UTC, ms),
           `level`, `program`, `instance` where there is one, `event`, `msg`, and `job_id`,
           `download_id` or `trace_id` where a line concerns one

PID 1 and ComfyUI's relay use the standard library only, so they write the same schema with
`json.dumps` (services.core.log_line, services/comfy/relay.py). Lines carry lifecycle events,
ids and error codes only, never workflow content or outputs.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

from services.core.log_line import stamp

FORMATS = ("text", "json")


class Program(logging.Filter):
    """Puts the program (and ComfyUI instance) on every record, and an `event`: the record's
    own (`extra={"event": ...}`), else its logger's name."""

    def __init__(self, program: str, instance: int | None = None) -> None:
        super().__init__()
        self.program, self.instance = program, instance

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "program", None):  # a line may speak for another (supervisord's)
            record.program = self.program
        if self.instance is not None and getattr(record, "instance", None) is None:
            record.instance = self.instance
        if not getattr(record, "event", None):
            record.event = record.name
        return True


class _Json(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return stamp(record.created)


class _Text(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return stamp(record.created)


def formatter(log_format: str = "text", direct: bool = False) -> logging.Formatter:
    """`direct`: a program's own line (`[program] msg`) rather than a logger's."""
    if log_format == "json":
        return _Json(
            "{asctime}{levelname}{message}",
            style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "message": "msg"},
        )
    if direct:
        return _Text("%(asctime)s [%(program)s] %(message)s")
    return _Text("%(asctime)s [%(program)s] %(levelname)s %(name)s: %(message)s")


def handler(
    program: str,
    log_format: str,
    stream: IO[str] | None = None,
    instance: int | None = None,
    direct: bool = False,
) -> logging.Handler:
    out = logging.StreamHandler(stream or sys.stdout)
    out.addFilter(Program(program, instance))
    out.setFormatter(formatter(log_format, direct))
    return out


def setup(program: str, log_format: str = "text", instance: int | None = None) -> None:
    """The program's logging: every logger's lines in the one format. Under json, what a
    library prints on stdout or stderr (a banner, a warning, a traceback) becomes log lines too."""
    out = handler(program, log_format, sys.__stdout__, instance)
    logging.basicConfig(level=logging.INFO, handlers=[out], force=True)
    if log_format == "json":
        sys.stdout = _Printed(logging.getLogger("stdout"), logging.INFO)
        sys.stderr = _Printed(logging.getLogger("stderr"), logging.WARNING)


class _Printed(io.TextIOBase):
    """A stream whose lines are logged: print() of a library, under LOG_FORMAT=json."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__()
        self.logger, self.level, self.pending = logger, level, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, "%s", line)
        return len(text)

    def writable(self) -> bool:
        return True


def sayer(
    program: str, log_format: str, stream: IO[str] | None = None, instance: int | None = None
) -> logging.Logger:
    """The direct lines of a program that prints what it does (the entrypoint, the watchdog, the
    launcher): its own logger, on `stream`, or warnings and errors on stderr and the rest on
    stdout."""
    logger = logging.getLogger(program)
    if stream is not None:
        logger.handlers = [handler(program, log_format, stream, instance, direct=True)]
    else:
        said, warned = (
            handler(program, log_format, s, instance, direct=True) for s in (sys.stdout, sys.stderr)
        )
        said.addFilter(lambda record: record.levelno < logging.WARNING)
        warned.addFilter(lambda record: record.levelno >= logging.WARNING)
        logger.handlers = [said, warned]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def gunicorn_logging(log_format: str, program: str = "api") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error and access logs in the worker's format."""
    out = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "line"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"program": {"()": Program, "program": program}},
        "formatters": {"line": {"()": formatter, "log_format": log_format}},
        "handlers": {"out": {**out, "filters": ["program"]}},
        "loggers": {
            name: {"level": "INFO", "handlers": ["out"], "propagate": False}
            for name in ("gunicorn.error", "gunicorn.access")
        },
        "root": {"level": "INFO", "handlers": ["out"]},
    }

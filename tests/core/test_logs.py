"""The log formats: text lines stamped in UTC, JSON lines of one schema (python-json-logger),
direct lines of the programs that print, and what a library prints kept in the schema."""

import io
import json
import logging
import re
import sys

import pytest

from services.core import config, log_line, logs

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def emitted(log_format: str, direct: bool = False, **extra) -> str:
    stream = io.StringIO()
    logger = logging.Logger("worker.test")
    logger.addHandler(logs.handler("api", log_format, stream, instance=None, direct=direct))
    logger.info("job %s ended", "j1", extra=extra)
    return stream.getvalue()


def test_text_lines_gain_a_utc_stamp_and_keep_their_program_tag():
    assert re.fullmatch(rf"{STAMP} \[api\] INFO worker.test: job j1 ended\n", emitted("text"))
    assert re.fullmatch(rf"{STAMP} \[api\] job j1 ended\n", emitted("text", direct=True))


def test_json_lines_carry_the_schema_and_the_line_s_own_fields():
    record = json.loads(emitted("json", event="job.end", job_id="j1"))
    assert re.fullmatch(STAMP, record["ts"]) and record["level"] == "INFO"
    assert (record["program"], record["event"], record["msg"], record["job_id"]) == (
        "api",
        "job.end",
        "job j1 ended",
        "j1",
    )
    assert json.loads(emitted("json"))["event"] == "worker.test"  # a line without its own event


def test_pid_1_s_standard_library_lines_have_the_same_fields(capsys):
    log_line.write("entrypoint", "drained", "json", event="supervise")
    record = json.loads(capsys.readouterr().err)
    assert set(record) == {"ts", "level", "msg", "program", "event"} and record["event"] == "supervise"
    log_line.write("entrypoint", "drained", "text")
    assert re.fullmatch(rf"{STAMP} \[entrypoint\] drained\n", capsys.readouterr().err)


def test_what_a_library_prints_becomes_log_lines_under_json(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "__stdout__", out)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    try:
        logs.setup("handler", "json")
        print("--- Starting Serverless Worker ---")
        print("a warning\nover two lines", file=sys.stderr)
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["program"], r["level"], r["msg"]) for r in lines] == [
        ("handler", "INFO", "--- Starting Serverless Worker ---"),
        ("handler", "WARNING", "a warning"),
        ("handler", "WARNING", "over two lines"),
    ]


def test_log_format_is_text_or_json():
    assert config.load({"ENCRYPTION_REQUIRED": "0", "LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(config.ConfigError, match="LOG_FORMAT='yaml' must be text or json"):
        config.load({"ENCRYPTION_REQUIRED": "0", "LOG_FORMAT": "yaml"})

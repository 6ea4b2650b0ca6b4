"""The served OpenAPI document covers every route, and schemathesis (bounded, seeded) against the
live gunicorn finds no 5xx and no answer outside the document."""

import os
import re
import subprocess
import sys

from services.api import docs_parts, openapi
from services.api.app import create_app
from services.core import config, errors
from tests.stack import Stack

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,unsupported_method"


def test_every_route_is_documented():
    app = create_app(config.load({"ENCRYPTION_REQUIRED": "0", "RUN_DIR": "/nonexistent"}))
    routes = {
        re.sub(r"<([a-z_]+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.startswith("swagger_ui.")  # /docs: the UI
    }
    assert routes == set(openapi.document()["paths"])


def test_each_documented_error_status_names_every_code_the_worker_answers_with_it():
    """A model fetch failing (502 model_fetch_failed) or a full cache (507 model_cache_full) is
    documented like a ComfyUI protocol error or an output too large: a client generated from the
    document knows every code it may get, and a new error class cannot be left out."""
    codes = errors.codes_by_status()
    answers = [
        (status, answer["description"])
        for path in openapi.document()["paths"].values()
        for operation in path.values()
        for status, answer in operation["responses"].items()
        if int(status) >= 400 and answer["content"]["application/json"]["schema"] == docs_parts.ERROR
    ]
    assert answers
    for status, description in answers:
        assert set(description.split(", ")) == set(codes[int(status)]), status
    run = openapi.document()["paths"]["/run"]["post"]["responses"]
    assert "model_fetch_failed" in run["502"]["description"]
    assert "model_cache_full" in run["507"]["description"]


def test_schemathesis_finds_nothing_against_the_live_api():
    stack = Stack("api", {"ENCRYPTION_REQUIRED": "0", "API_KEY": "st-key"}).start(wait_for=("api",))
    try:
        stack.wait_http("/healthz")
        schemathesis = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        result = subprocess.run(
            [
                schemathesis,
                "run",
                f"{stack.url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                "40",
                "--seed",
                "20261127",
                "--generation-database",
                "none",
                "--request-timeout",
                "20",
                "-H",
                "Authorization: Bearer st-key",
                "--exclude-path",  # a drained pod answers 503 by design (tests/api/test_drain.py)
                "/drain",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-5000:]
        assert " passed" in result.stdout
        # a bug answers 500 internal_error and logs one `unexpected` line (never a traceback)
        assert ": unexpected " not in stack.log and "internal_error" not in stack.log
        assert "internal_error" not in result.stdout
    finally:
        stack.stop()

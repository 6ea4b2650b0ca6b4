"""How both Flask apps answer: JSON (large bodies serialized off the gevent hub and spliced,
services.core.json_text), every failure as `{"error": "<code>: <detail>"}` with its status, and
a request body over MAX_REQUEST_MB refused before it is read."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from services.core import background, errors, json_text
from services.core.config import Settings
from services.core.offload import offload


def install(app: Flask, settings: Settings, log: logging.Logger) -> None:
    """The body limit and the error mapping of `app`; `log`: where a bug's line goes."""
    app.config["MAX_CONTENT_LENGTH"] = body_limit(settings)

    @app.errorhandler(errors.WorkerError)
    def worker_error(exc: errors.WorkerError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return error_response(too_large(settings))
        if exc.code == 404:
            return error_response(errors.NotFound(f"no route {request.method} {request.path}"))
        if exc.code == 405:
            response = error_response(
                errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
            )
            response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
            return response
        return json_response({"error": f"http_{exc.code}: {exc.name}"}, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        """A bug: a code, never a traceback (Flask hands it here, not to HTTPException's)."""
        background.log_unexpected(log, f"request {request.path}", exc)
        return error_response(errors.WorkerError("unexpected server error"))


def body_limit(settings: Settings) -> int:
    """The largest request body, in bytes (MAX_REQUEST_MB)."""
    return settings.max_request_mb * 1024 * 1024


def too_large(settings: Settings) -> errors.BodyTooLarge:
    return errors.BodyTooLarge(f"the limit is {settings.max_request_mb} MB (MAX_REQUEST_MB)")


def json_response(body: Any, status: int = 200, size: int = 0) -> Response:
    """`size`: bytes of outputs or ciphertext the body carries; large ones serialize off the hub."""
    if size >= json_text.SPLICED:
        text = offload(_utf8_json, body, size=size)  # bytes: werkzeug would encode a str on the hub
    else:
        text = json.dumps(body, separators=(",", ":"))
    return Response(text, status=status, mimetype="application/json")


def error_response(exc: errors.WorkerError) -> Response:
    return retry_after(json_response(exc.to_dict(), exc.http_status), exc.retry_after_s)


def retry_after(response: Response, seconds: int | None) -> Response:
    """`response` with the Retry-After a failure that may pass later carries."""
    if seconds is not None:
        response.headers["Retry-After"] = str(seconds)
    return response


def _utf8_json(body: Any) -> bytes:
    return json_text.dumps(body).encode("utf-8")

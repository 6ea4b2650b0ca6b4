"""How the pod API reads job bodies and writes job answers (JSON answers and errors in general:
services.web.answers).

A body that carries a job's outputs or ciphertext is serialized off the hub and spliced
(services.core.json_text), so probes stay fast while megabytes flow. A request body is parsed
off the hub too.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from services.core import errors, json_text
from services.core.config import Settings
from services.core.offload import offload
from services.jobs import envelopes
from services.web.answers import json_response, retry_after


def payload_response(body: dict | bytes, status: int = 200, retry_after_s: int | None = None) -> Response:
    """A body that may carry a job's result (outputs, ciphertext), directly or under `result`
    (pod async jobs) or `output` (the RunPod-shaped routes); bytes are an envelope v2 or parts."""
    if isinstance(body, bytes):
        mimetype = envelopes.media_type_of(body)
        return retry_after(Response(body, status=status, mimetype=mimetype), retry_after_s)
    return retry_after(json_response(body, status, size=_payload_size(body)), retry_after_s)


def read_request(settings: Settings, template: str | None = None) -> Any:
    """A job's body by its Content-Type: JSON, an envelope v2 (its header read, not opened) or
    plain parts (services.jobs.envelopes.v2), refused unread where encryption is required.
    `template`: a call of it, whose plain body is the parameters alone."""
    if request.mimetype == envelopes.MEDIA_TYPE:
        raw = _body()
        return offload(envelopes.Sealed.parse, raw, size=len(raw))  # copies the box's megabytes
    if request.mimetype == envelopes.PLAIN_MEDIA_TYPE:
        if settings.encryption_required:
            raise errors.EncryptionRequired("this worker accepts only encrypted requests (an envelope)")
        raw = _body()
        return offload(envelopes.read_plain, raw, template, size=len(raw))
    body = read_json()
    if template is not None and not envelopes.is_envelope(body):
        return {"template": template, "params": body}
    return body


def in_parts() -> bool:
    """The request came in bytes (an envelope v2 or plain parts): it is answered in bytes."""
    return request.mimetype in (envelopes.MEDIA_TYPE, envelopes.PLAIN_MEDIA_TYPE)


def read_json() -> Any:
    """The request body as JSON, or `invalid_json`."""
    raw = _body()
    try:
        return offload(json_text.loads, raw, size=len(raw))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise errors.InvalidJson("the body is not valid JSON") from None


def _body() -> bytes:
    """The body in one read of its announced length from the server's own stream: through
    werkzeug's wrapper a 23 MB body took ~75 ms here, read this way ~10 ms."""
    length = request.content_length
    if length is None:  # chunked: werkzeug reads it as it comes
        return request.get_data(cache=False)
    if request.max_content_length is not None and length > request.max_content_length:
        raise RequestEntityTooLarge()
    return request.environ["wsgi.input"].read(length)


def _payload_size(body: dict) -> int:
    """Bytes of output data or ciphertext in a result."""
    inner = next((body[k] for k in ("result", "output") if isinstance(body.get(k), dict)), body)
    outputs = next((inner[k] for k in ("outputs", "images") if isinstance(inner.get(k), list)), [])
    return len(str(inner.get("ciphertext") or "")) + sum(
        len(str(o.get("data") or "")) for o in outputs if isinstance(o, dict)
    )


def asked_async() -> bool:
    """The request asks for an async job (`?async=1`): answered where to poll, kept by its store."""
    return request.args.get("async") in ("1", "true")

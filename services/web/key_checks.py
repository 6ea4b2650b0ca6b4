"""Which key calls, and whether it may: the check both Flask apps make before a request (the
pod API for each route's scope, services.api.access_control; the local queue for its public API
and /metrics), and the line and count a refusal leaves. Never the key itself in a line, a label
or an answer: its name."""

from __future__ import annotations

import logging
from typing import Protocol

from flask import request

from services.core import errors
from services.jobs.access import Key, Keys

log = logging.getLogger("worker.access")
AUTH_HINT = "send 'Authorization: Bearer <key>' with a key of API_KEY or API_KEYS_FILE"


class Seen(Protocol):
    """The metrics' count of requests by key and result (services.jobs.metrics)."""

    def request_seen(self, key_name: str, result: str) -> None: ...


def check(keys: Keys, scope: str, seen: Seen) -> Key:
    """The key of the request being answered, which has `scope` ("": any known key); raises
    `unauthorized` or `forbidden`, after its line and its count."""
    key = keys.identify(request.headers.get("Authorization"))
    if key is None:
        raise refused(seen, None, errors.Unauthorized(AUTH_HINT))
    if scope and scope not in key.scopes:
        raise refused(seen, key, errors.Forbidden(f"this key has no '{scope}' scope, which this route needs"))
    return key


def refused(seen: Seen, key: Key | None, error: errors.WorkerError) -> errors.WorkerError:
    """Count and say a refusal of the request being answered; `error`, to raise or answer."""
    name = key.name if key is not None else "-"
    seen.request_seen(name, error.code)
    log.warning(
        "refused %s %s for key %s: %s",
        request.method,
        route(),
        name,
        error.code,
        extra={"event": "access.refused", "key_name": name, "route": route(), "result": error.code},
    )
    return error


def route() -> str:
    """The request's route as declared (`/jobs/<job_id>`): a line never names a job's id."""
    return request.url_rule.rule if request.url_rule else request.path

"""RunPod's public job protocol, as both our RunPod-style servers speak it: the pod API's
`/v2/<id>/...` routes and the local queue of serverless mode off RunPod.

`{"input": ...}` in; `{"id", "status", "output" | "error"}` out; `Authorization: Bearer <key>`
when a key is set; bodies up to MAX_REQUEST_MB. Statuses and outcomes come from
services.jobs.outcome.
"""

from __future__ import annotations

import hmac
from typing import Any

from services.core import errors
from services.core.config import Settings
from services.jobs import outcome
from services.jobs.async_jobs import AsyncJob

AUTH_HINT = "send 'Authorization: Bearer <API_KEY>'"


def authorized(header: str | None, key: str | None) -> bool:
    """No key set: open. Otherwise exactly `Bearer <key>`, compared in constant time."""
    if not key:
        return True
    return hmac.compare_digest((header or "").encode(), f"Bearer {key}".encode())


def body_limit(settings: Settings) -> int:
    """The largest request body, in bytes (MAX_REQUEST_MB)."""
    return settings.max_request_mb * 1024 * 1024


def too_large(settings: Settings) -> errors.BodyTooLarge:
    return errors.BodyTooLarge(f"the limit is {settings.max_request_mb} MB (MAX_REQUEST_MB)")


def input_of(body: Any) -> Any:
    if not isinstance(body, dict) or "input" not in body:
        raise errors.InvalidRequest('the body must be {"input": ...}, as a RunPod endpoint takes it')
    return body["input"]


def view(job: AsyncJob) -> dict:
    """A pod's async job as RunPod's status route shows it."""
    if job.state == outcome.CANCELLED or job.cancel.is_set():
        return {"id": job.id, "status": outcome.RUNPOD_STATUS[outcome.CANCELLED]}
    if job.result is None:
        return {"id": job.id, "status": outcome.RUNPOD_STATUS[job.state]}
    return {"id": job.id, **outcome.as_runpod(job.result)}

"""RunPod's public job protocol, as both our RunPod-style servers speak it: the pod API's
`/v2/<id>/...` routes and the local queue of serverless mode off RunPod.

`{"input": ...}` in; `{"id", "status", "output" | "error"}` out; `Authorization: Bearer <key>`
when a key is set (services.web.key_checks); bodies up to MAX_REQUEST_MB (services.web.answers).
Statuses and outcomes come from services.jobs.outcome. The serverless handler reads a job's
trace from its input the same way.
"""

from __future__ import annotations

from typing import Any

from services.core import errors, tracing
from services.jobs import outcome
from services.jobs.async_jobs import AsyncJob


def input_of(body: Any) -> Any:
    if not isinstance(body, dict) or "input" not in body:
        raise errors.InvalidRequest('the body must be {"input": ...}, as a RunPod endpoint takes it')
    return body["input"]


def trace_of(job_input: Any) -> tuple[Any, dict[str, str]]:
    """A job's input less its `traceparent` (and `tracestate`) fields, and those fields: the
    client's trace, which the job continues (services.core.tracing)."""
    if not isinstance(job_input, dict) or not any(k in job_input for k in tracing.FIELDS):
        return job_input, {}
    rest = {k: v for k, v in job_input.items() if k not in tracing.FIELDS}
    return rest, tracing.carried(job_input)


def view(job: AsyncJob) -> dict:
    """A pod's async job as RunPod's status route shows it."""
    if job.state == outcome.CANCELLED or job.cancel.is_set():
        return {"id": job.id, "status": outcome.RUNPOD_STATUS[outcome.CANCELLED]}
    if job.result is None:
        return {"id": job.id, "status": outcome.RUNPOD_STATUS[job.state]}
    return {"id": job.id, **outcome.as_runpod(job.result), **traced(job.trace_id)}


def traced(trace_id: str) -> dict:
    """The field that names a job's trace in an answer (none when nothing is traced)."""
    return {"trace_id": trace_id} if trace_id else {}

"""RunPod's public job routes on the pod API, so a client written for a RunPod endpoint (such as
worker-comfyui's) works against a pod by changing only its endpoint URL:
`https://api.runpod.ai/v2/<endpoint id>` becomes `http://<pod>:<API_PORT>/v2/<any id>`.

`{"input": ...}` in, `{"id", "status", "output" | "error"}` out, HTTP 200 for a job that ran
(as RunPod answers); the job itself goes through the same pipeline as `/run`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response

from services.core import errors
from services.jobs.async_jobs import AsyncJob, AsyncJobs
from services.jobs.pipeline import Pipeline

STATUS = {
    "queued": "IN_QUEUE",
    "running": "IN_PROGRESS",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "cancelled": "CANCELLED",
}


def blueprint(
    pipeline: Pipeline, jobs: AsyncJobs, read_body: Callable[[], Any], respond: Callable[[dict], Response]
) -> Blueprint:
    routes = Blueprint("runpod", __name__, url_prefix="/v2/<endpoint_id>")

    @routes.post("/runsync")
    def runsync(endpoint_id: str) -> Response:
        reply = pipeline.run(_input(read_body()))
        return respond({"id": f"sync-{uuid.uuid4()}", **_outcome(reply.body)})

    @routes.post("/run")
    def run(endpoint_id: str) -> Response:
        job = jobs.start(_input(read_body()))
        return respond({"id": job.id, "status": STATUS[job.state]})

    @routes.route("/status/<job_id>", methods=["GET", "POST"])
    def status(endpoint_id: str, job_id: str) -> Response:
        return respond(_view(_known(jobs.get(job_id))))

    @routes.post("/cancel/<job_id>")
    def cancel(endpoint_id: str, job_id: str) -> Response:
        return respond(_view(_known(jobs.cancel(job_id))))

    return routes


def _input(body: Any) -> Any:
    if not isinstance(body, dict) or "input" not in body:
        raise errors.InvalidRequest('the body must be {"input": ...}, as a RunPod endpoint takes it')
    return body["input"]


def _known(job: AsyncJob | None) -> AsyncJob:
    if job is None:
        raise errors.JobNotFound("no such job (ended jobs are kept for JOB_TTL_S, an hour by default)")
    return job


def _outcome(body: dict) -> dict:
    """A handler's answer as RunPod reports it: `error` taken out and the job FAILED (what is
    left stays as its output), anything else is the output. A sealed answer has no `error`."""
    if "error" not in body:
        return {"status": "COMPLETED", "output": body}
    rest = {k: v for k, v in body.items() if k != "error"}
    return {"status": "FAILED", "error": body["error"], **({"output": rest} if rest else {})}


def _view(job: AsyncJob) -> dict:
    if job.state == "cancelled" or job.cancel.is_set():
        return {"id": job.id, "status": "CANCELLED"}
    if job.result is None:
        return {"id": job.id, "status": STATUS[job.state]}
    return {"id": job.id, **_outcome(job.result)}

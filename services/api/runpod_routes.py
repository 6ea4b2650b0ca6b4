"""RunPod's public job routes on the pod API, so a client written for a RunPod endpoint (such as
worker-comfyui's) works against a pod by changing only its endpoint URL:
`https://api.runpod.ai/v2/<endpoint id>` becomes `http://<pod>:<API_PORT>/v2/<any id>`.

The protocol (statuses, outcomes, input) is services.jobs.runpod_protocol, shared with the local
queue of serverless mode; the job itself goes through the same pipeline as `/run`, and a job
that ran answers HTTP 200 (as RunPod does).
"""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, request

from services.api import docs_parts as docs
from services.api.access_control import caller, takes_a_slot
from services.api.context import Api
from services.api.responses import payload_response, read_json
from services.core import tracing
from services.jobs import outcome
from services.jobs.async_jobs import known
from services.jobs.quotas import Slot
from services.web import runpod_protocol


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("runpod", __name__, url_prefix="/v2/<endpoint_id>")

    @routes.post("/runsync")
    @takes_a_slot(api)
    def runsync(endpoint_id: str, slot: Slot) -> Response:
        name = f"sync-{uuid.uuid4()}"
        body, trace = _job_input()
        reply = api.worker.pipeline.run(body, route="runsync", name=name, trace=trace, key=caller().name)
        return payload_response(
            {"id": name, **outcome.as_runpod(reply.body), **runpod_protocol.traced(reply.trace_id)}
        )

    @routes.post("/run")
    @takes_a_slot(api)
    def run(endpoint_id: str, slot: Slot) -> Response:
        body, trace = _job_input()
        job = api.jobs.start(body, trace, caller().name, slot)
        return payload_response({"id": job.id, "status": outcome.RUNPOD_STATUS[job.state]})

    @routes.route("/status/<job_id>", methods=["GET", "POST"])
    def status(endpoint_id: str, job_id: str) -> Response:
        return payload_response(runpod_protocol.view(known(api.jobs.get(job_id, caller().name))))

    @routes.post("/cancel/<job_id>")
    def cancel(endpoint_id: str, job_id: str) -> Response:
        return payload_response(runpod_protocol.view(known(api.jobs.cancel(job_id, caller().name))))

    return routes


def _job_input() -> tuple[object, dict[str, str]]:
    """The job's input and the client's trace: its input's `traceparent` field, as a serverless
    job carries it, else the request's `traceparent` header, as on `/run`."""
    body, trace = runpod_protocol.trace_of(runpod_protocol.input_of(read_json()))
    return body, trace or tracing.carried(request.headers)


def paths() -> dict:
    """RunPod's job routes, for clients written against a RunPod endpoint (worker-comfyui's)."""
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {"input": {"$ref": "#/components/schemas/RunRequest"}},
                }
            }
        },
    }
    job = docs.answer(
        docs.RUNPOD_JOB, "the job as RunPod reports it (a failed job is 200 with status FAILED)"
    )
    return {
        "/v2/{endpoint_id}/runsync": {
            "post": {
                "summary": "RunPod-style: run and wait (endpoint_id is any name)",
                "parameters": [docs.ENDPOINT_ID],
                "requestBody": body,
                "responses": {"200": job, **docs.errors(400, 429, 503, *docs.COMMON)},
            }
        },
        "/v2/{endpoint_id}/run": {
            "post": {
                "summary": "RunPod-style: start a job",
                "parameters": [docs.ENDPOINT_ID],
                "requestBody": body,
                "responses": {"200": job, **docs.errors(400, 429, 503, *docs.COMMON)},
            }
        },
        "/v2/{endpoint_id}/status/{job_id}": {
            method: {
                "summary": "RunPod-style: a job's status and output",
                "parameters": [docs.ENDPOINT_ID, docs.JOB_ID],
                "responses": {"200": job, **docs.errors(404, 503, *docs.COMMON)},
            }
            for method in ("get", "post")
        },
        "/v2/{endpoint_id}/cancel/{job_id}": {
            "post": {
                "summary": "RunPod-style: cancel a job",
                "parameters": [docs.ENDPOINT_ID, docs.JOB_ID],
                "responses": {"200": job, **docs.errors(404, 503, *docs.COMMON)},
            }
        },
    }

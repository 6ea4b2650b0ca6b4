"""Jobs: `/run` (answered when the job ends, or at once with `?async=1`) and the async job's
status and cancel. Everything of the job itself is the pipeline's (services.jobs.pipeline)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, request

from services.api import docs_parts as docs
from services.api.access_control import caller, takes_a_slot
from services.api.context import Api
from services.api.responses import asked_async, in_parts, payload_response, read_request
from services.core import errors, json_text, tracing
from services.core.offload import offload
from services.jobs import envelopes
from services.jobs.async_jobs import known
from services.jobs.quotas import Slot
from services.web.answers import json_response


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("jobs", __name__)

    @routes.post("/run")
    @takes_a_slot(api)
    def run(slot: Slot) -> Response:
        with traced():
            with tracing.stage("request"):
                body = read_request(api.settings)
            return answer(api, body, slot)

    @routes.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        return payload_response(known(api.jobs.get(job_id, caller().name)).view())

    @routes.post("/jobs/<job_id>/cancel")
    def job_cancel(job_id: str) -> Response:
        return json_response(known(api.jobs.cancel(job_id, caller().name)).view())

    return routes


@contextmanager
def traced() -> Iterator[None]:
    """A job answered in this call is one trace from its request to its answer, continuing the
    caller's `traceparent` header; an async job's trace begins where it is kept (its store)."""
    if asked_async():
        yield
        return
    with tracing.job(request.headers, **{"job.route": request.url_rule.rule if request.url_rule else ""}):
        yield


def answer(api: Api, body: object, slot: Slot) -> Response:
    """Run a job and answer its result, or start it with `?async=1` and answer where to poll
    (its store keeps `slot`, the key's job slot it took). Both answers name the job (X-Job-Id,
    its end line's id) and its trace (X-Trace-Id)."""
    if asked_async():
        if in_parts():
            raise errors.InvalidRequest(
                "a body in bytes is answered in the same call: send it without ?async=1, or as JSON"
            )
        job = api.jobs.start(body, tracing.carried(request.headers), caller().name, slot)
        view = {"id": job.id, "state": job.state, "status_url": f"/jobs/{job.id}"}
        return _named(json_response(view, 202), job.id, job.trace_id)
    route = request.url_rule.rule if request.url_rule else ""
    reply = api.worker.pipeline.run(body, route=route, key=caller().name)
    with tracing.stage("answer"):
        answer = reply.body
        if request.mimetype == envelopes.PLAIN_MEDIA_TYPE and isinstance(answer, dict):  # parts in, parts out
            answer = offload(envelopes.write_plain, answer, size=json_text.size_hint(answer))
        response = payload_response(answer, reply.status, reply.retry_after_s)
    return _named(response, reply.job_id, reply.trace_id)


def _named(response: Response, job_id: str, trace_id: str) -> Response:
    response.headers["X-Job-Id"] = job_id
    if trace_id:
        response.headers["X-Trace-Id"] = trace_id
    return response


def paths() -> dict:
    """Jobs: run, poll, cancel."""
    return {
        "/run": {
            "post": {
                "summary": "run a workflow (or start it with ?async=1)",
                "parameters": [docs.ASYNC],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}},
                        docs.V2_MEDIA_TYPE: docs.BYTES,
                        docs.PARTS_MEDIA_TYPE: docs.BYTES,
                    },
                },
                "responses": docs.sealable(
                    {
                        "200": docs.answer({"$ref": "#/components/schemas/Result"}, "the result"),
                        "202": docs.answer({"$ref": "#/components/schemas/AsyncJob"}, "started"),
                        **docs.errors(400, 404, 409, 422, 429, 500, 502, 503, 504, 507, *docs.COMMON),
                    }
                ),
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "state, progress and result of an async job",
                "parameters": [docs.JOB_ID],
                "responses": {
                    "200": docs.answer({"$ref": "#/components/schemas/AsyncJob"}, "the job"),
                    **docs.errors(404, 503, *docs.COMMON),
                },
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "summary": "cancel an async job (interrupts ComfyUI)",
                "parameters": [docs.JOB_ID],
                "responses": {
                    "200": docs.answer({"$ref": "#/components/schemas/AsyncJob"}, "the job"),
                    **docs.errors(404, 503, *docs.COMMON),
                },
            }
        },
    }

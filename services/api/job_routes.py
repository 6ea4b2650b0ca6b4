"""Jobs: `/run` (answered when the job ends, or at once with `?async=1`) and the async job's
status and cancel. Everything of the job itself is the pipeline's (services.jobs.pipeline)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from services.api.context import Api
from services.api.drain_routes import takes_work
from services.api.responses import in_parts, json_response, payload_response, read_request
from services.core import errors, json_text
from services.core.offload import offload
from services.jobs import envelope_v2
from services.jobs.async_jobs import known


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("jobs", __name__)

    @routes.post("/run")
    @takes_work
    def run() -> Response:
        return answer(api, read_request(api.settings))

    @routes.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        return payload_response(known(api.jobs.get(job_id)).view())

    @routes.post("/jobs/<job_id>/cancel")
    def job_cancel(job_id: str) -> Response:
        return json_response(known(api.jobs.cancel(job_id)).view())

    return routes


def answer(api: Api, body: object) -> Response:
    """Run a job and answer its result, or start it with `?async=1` and answer where to poll."""
    if request.args.get("async") in ("1", "true"):
        if in_parts():
            raise errors.InvalidRequest(
                "a body in bytes is answered in the same call: send it without ?async=1, or as JSON"
            )
        job = api.jobs.start(body)
        return json_response({"id": job.id, "state": job.state, "status_url": f"/jobs/{job.id}"}, 202)
    reply = api.worker.pipeline.run(body, route=request.url_rule.rule if request.url_rule else "")
    answer = reply.body
    if request.mimetype == envelope_v2.PLAIN_MEDIA_TYPE and isinstance(answer, dict):  # parts in, parts out
        answer = offload(envelope_v2.write_plain, answer, size=json_text.size_hint(answer))
    response = payload_response(answer, reply.status, reply.retry_after_s)
    response.headers["X-Job-Id"] = reply.job_id  # the id its end line in the logs names
    return response

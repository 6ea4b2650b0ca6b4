"""`POST /drain` and `DELETE /drain`: take no new work, for a planned restart (a Kubernetes
preStop hook, maintenance), and take it again. While draining, `/readyz` answers 503 so load
balancers stop sending, `/healthz` stays 200, work already accepted runs to its end, and new
work (NEW_WORK) is refused with 503 `draining` and Retry-After before its body is read."""

from __future__ import annotations

from flask import Blueprint, Response, request

from services.api.context import Api
from services.api.responses import error_response, json_response
from services.core import drain, errors

NEW_WORK = {"jobs.run", "models.download", "runpod.run", "runpod.runsync"}  # route endpoints


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("drain", __name__)
    layout = api.settings.run_layout

    @routes.post("/drain")
    def start() -> Response:
        return json_response({"draining": True, "since": drain.begin(layout).since})

    @routes.delete("/drain")
    def stop() -> Response:
        drain.end(layout)
        return json_response({"draining": False, "since": None})

    return routes


def refuse_new_work(api: Api) -> Response | None:
    """A before-request hook: new work while draining answers 503 `draining`."""
    if request.endpoint in NEW_WORK and drain.since(api.settings.run_layout) is not None:
        return error_response(errors.Draining("this worker is draining before a restart; send it to another"))
    return None

"""`POST /drain` and `DELETE /drain`: take no new work, for a planned restart (a Kubernetes
preStop hook, maintenance), and take it again. While draining, `/readyz` answers 503 so load
balancers stop sending, `/healthz` stays 200, work already accepted runs to its end, and new
work (each route marked `takes_work`) is refused with 503 `draining` and Retry-After before its
body is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, Response, current_app, request

from services.api import docs_parts as docs
from services.api.context import Api
from services.core import drain, errors
from services.web.answers import error_response, json_response

View = TypeVar("View", bound=Callable)


def takes_work(view: View) -> View:
    """Marks a route that accepts new work: refused while the pod drains."""
    view.takes_work = True  # type: ignore[attr-defined]
    return view


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("drain", __name__)
    layout = api.settings.run_layout

    @routes.post("/drain")
    def start() -> Response:
        return json_response({"draining": True, "since": drain.begin(layout).since})

    @routes.delete("/drain")
    def stop() -> Response:
        if not drain.end(layout):
            raise errors.NotAvailable("the pod stops: a drain the stop signal began cannot be taken back")
        return json_response({"draining": False, "since": None})

    return routes


def refuse_new_work(api: Api) -> Response | None:
    """A before-request hook: new work while draining answers 503 `draining`."""
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "takes_work", False) and drain.since(api.settings.run_layout) is not None:
        return error_response(errors.Draining("this worker is draining before a restart; send it to another"))
    return None


def paths() -> dict:
    """Planned restarts."""
    state = docs.answer(docs.OBJECT, "{draining, since}")
    return {
        "/drain": {
            "post": {
                "summary": "take no new work (503 draining), finish what was accepted; /readyz answers 503",
                "responses": {"200": state, **docs.errors(*docs.COMMON)},
            },
            "delete": {
                "summary": "take work again",
                "responses": {"200": state, **docs.errors(*docs.COMMON)},
            },
        }
    }

"""Templates on the pod: what serves, each one's schema and an example, and a call that runs it
(services.jobs.templates) like `/run`, sync or with `?async=1`.

A plain call's body is the parameters alone, so the template's JSON Schema is the body's; an
encrypted call seals `{"template": name, "params": {...}}`, here or to `/run`.
"""

from __future__ import annotations

from flask import Blueprint, Response

from services.api import job_routes
from services.api.context import Api
from services.api.drain_routes import takes_work
from services.api.responses import read_request
from services.core import tracing
from services.jobs import envelopes
from services.jobs import templates as tpl
from services.web.answers import json_response


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("templates", __name__, url_prefix="/templates")
    templates = api.worker.templates

    @routes.get("")
    def listing() -> Response:
        return json_response(
            {
                "templates": [
                    {"name": t.name, "description": t.description, "run": f"/templates/{t.name}/run"}
                    for t in templates.serving()
                ],
                "rejected": templates.view()["rejected"],
            }
        )

    @routes.get("/<name>")
    def one(name: str) -> Response:
        template = templates.get(name)
        return json_response(
            {
                "name": template.name,
                "description": template.description,
                "schema": templates.schema(template),
                "defaults": tpl.defaults(template),
                "example": tpl.example(template),
            }
        )

    @routes.post("/<name>/run")
    @takes_work
    def run(name: str) -> Response:
        with job_routes.traced():
            with tracing.stage("request"):
                body = read_request(api.settings, template=name)
            if not (envelopes.is_envelope(body) or isinstance(body, envelopes.Sealed)):
                templates.get(name)  # an unknown name is 404 before anything else
            return job_routes.answer(api, body)

    return routes


def documented(api: Api) -> list[dict]:
    """Each serving template for the OpenAPI document: its schema as calls are checked now."""
    templates = api.worker.templates
    return [
        {
            "name": t.name,
            "description": t.description,
            "schema": templates.schema(t),
            "example": tpl.example(t),
        }
        for t in templates.serving()
    ]

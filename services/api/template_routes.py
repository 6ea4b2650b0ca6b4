"""Templates on the pod: what serves, each one's schema and an example, and a call that runs it
(services.jobs.templates) like `/run`, sync or with `?async=1`.

A plain call's body is the parameters alone, so the template's JSON Schema is the body's; an
encrypted call seals `{"template": name, "params": {...}}`, here or to `/run`.
"""

from __future__ import annotations

from flask import Blueprint, Response

from services.api import docs_parts as docs
from services.api import job_routes
from services.api.access_control import takes_a_slot
from services.api.context import Api
from services.api.responses import read_request
from services.core import tracing
from services.jobs import envelopes
from services.jobs import templates as tpl
from services.jobs.quotas import Slot
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
    @takes_a_slot(api)
    def run(name: str, slot: Slot) -> Response:
        with job_routes.traced():
            with tracing.stage("request"):
                body = read_request(api.settings, template=name)
            if not (envelopes.is_envelope(body) or isinstance(body, envelopes.Sealed)):
                templates.get(name)  # an unknown name is 404 before anything else
            return job_routes.answer(api, body, slot)

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


def paths(templates: list[dict]) -> dict:
    """The listing, one template's description, a call by name, and an operation per template."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    paths = {
        "/templates": {
            "get": {
                "summary": "the templates that serve, and those rejected with why",
                "tags": ["templates"],
                "responses": {"200": docs.answer(docs.OBJECT, "the templates"), **docs.errors(*docs.COMMON)},
            }
        },
        "/templates/{name}": {
            "get": {
                "summary": "one template: its parameters' schema, defaults and an example body",
                "tags": ["templates"],
                "parameters": [name],
                "responses": {
                    "200": docs.answer(docs.OBJECT, "the template"),
                    **docs.errors(404, *docs.COMMON),
                },
            }
        },
        "/templates/{name}/run": _run_doc("run a template by name", [name], docs.OBJECT),
    }
    for template in templates:
        summary = f"{template['name']}: {template['description']}"[:120]
        run = _run_doc(summary, [], template["schema"], template["example"])
        run["post"]["operationId"] = "run_" + template["name"].replace("-", "_")
        paths[f"/templates/{template['name']}/run"] = run
    return paths


def _run_doc(summary: str, parameters: list, body: dict, example: dict | None = None) -> dict:
    """A call: the parameters as the body (or an envelope sealing {template, params})."""
    media = {"schema": body, **({"example": example} if example is not None else {})}
    return {
        "post": {
            "summary": summary,
            "tags": ["templates"],
            "parameters": [*parameters, docs.ASYNC],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": media,
                    docs.V2_MEDIA_TYPE: docs.BYTES,
                    docs.PARTS_MEDIA_TYPE: docs.BYTES,
                },
            },
            "responses": docs.sealable(
                {
                    "200": docs.answer({"$ref": "#/components/schemas/Result"}, "the result, with `params`"),
                    "202": docs.answer({"$ref": "#/components/schemas/AsyncJob"}, "started"),
                    **docs.errors(400, 404, 409, 422, 429, 500, 502, 503, 504, 507, *docs.COMMON),
                }
            ),
        }
    }

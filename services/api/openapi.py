"""The pod API's OpenAPI 3 document, served at /openapi.json (this module's blueprint) and checked by schemathesis: each
route module describes its own routes (`paths()`, with services.api.docs_parts), each shape is
declared once beside the code that checks or makes it, and this module assembles them."""

from __future__ import annotations

from flask import Blueprint, Response

from services.api import (
    access_control,
    comfy_routes,
    drain_routes,
    job_routes,
    model_routes,
    probes,
    runpod_routes,
    template_routes,
)
from services.api import docs_parts as docs
from services.api.context import Api
from services.core import errors
from services.jobs import envelopes, job_request
from services.jobs.async_jobs import SHAPES as JOB_SHAPES
from services.models.download_plan import SHAPES as DOWNLOAD_SHAPES
from services.web.answers import json_response


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("openapi", __name__)

    @routes.get("/openapi.json")
    def openapi_document() -> Response:
        return json_response(access_control.declared(document(template_routes.documented(api))))

    return routes


def document(templates: list[dict] = ()) -> dict:
    """`templates`: one operation each, {name, description, schema, example}; its request body is
    the schema a call is validated with."""
    paths = {
        **probes.paths(),
        **_own_paths(),
        **drain_routes.paths(),
        **job_routes.paths(),
        **template_routes.paths(templates),
        **model_routes.paths(),
        **comfy_routes.paths(),
        **runpod_routes.paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "comfy-worker pod API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                **errors.SHAPES,
                **envelopes.SHAPES,
                **job_request.SHAPES,
                **JOB_SHAPES,
                **probes.SHAPES,
                **DOWNLOAD_SHAPES,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "API_KEY"}},
        },
        "security": [{"bearer": []}],
    }


def _own_paths() -> dict:
    return {
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": docs.answer(docs.OBJECT, "OpenAPI 3")},
            }
        },
    }

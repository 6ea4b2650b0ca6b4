"""The model volume: `/download` (background transfers, polled), `/downloads`, `/models/ls`."""

from __future__ import annotations

import functools

from flask import Blueprint, Response, request

from services.api import docs_parts as docs
from services.api.access_control import caller
from services.api.context import Api
from services.api.drain_routes import takes_work
from services.api.responses import read_json
from services.core import tracing
from services.models import model_store
from services.web.answers import json_response


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("models", __name__)
    downloads = api.worker.downloads

    @routes.post("/download")
    @takes_work
    def download() -> Response:
        body = read_json()
        items = body.get("items") if isinstance(body, dict) else body
        key = caller()
        counted = functools.partial(api.quotas.downloaded, key.name) if key.download_bytes_per_day else None
        started = downloads.submit(items, tracing.carried(request.headers), counted)
        if isinstance(body, dict) and body.get("wait") is True:
            for item in started:
                item.ended.wait()
            return json_response({"downloads": [d.view() for d in started]})
        return json_response({"downloads": [d.view() for d in started]}, 202)

    @routes.get("/download/<download_id>")
    def download_status(download_id: str) -> Response:
        return json_response(downloads.get(download_id).view())

    @routes.get("/downloads")
    def download_list() -> Response:
        return json_response({"downloads": [d.view() for d in downloads.all()]})

    @routes.get("/models/ls")
    def models_ls() -> Response:
        model_dir = api.settings.model_dir
        listing = downloads.cache.annotate(model_store.listing(model_dir, request.args.get("type")))
        return json_response({"model_dir": model_dir, "models": listing})

    return routes


def paths() -> dict:
    """The model volume."""
    return {
        "/download": {
            "post": {
                "summary": "download models into COMFYUI_MODEL_DIR",
                "requestBody": docs.DOWNLOAD_BODY,
                "responses": {
                    "200": docs.answer(docs.DOWNLOADS, "finished (wait)"),
                    "202": docs.answer(docs.DOWNLOADS, "started"),
                    **docs.errors(400, 429, 503, *docs.COMMON),
                },
            }
        },
        "/download/{download_id}": {
            "get": {
                "summary": "one download's state and progress",
                "parameters": [docs.DOWNLOAD_ID],
                "responses": {
                    "200": docs.answer({"$ref": "#/components/schemas/Download"}, "the download"),
                    **docs.errors(404, *docs.COMMON),
                },
            }
        },
        "/downloads": {
            "get": {
                "summary": "every known download",
                "responses": {"200": docs.answer(docs.DOWNLOADS, "downloads"), **docs.errors(*docs.COMMON)},
            }
        },
        "/models/ls": {
            "get": {
                "summary": "the model volume",
                "parameters": [
                    {"name": "type", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": docs.answer(docs.OBJECT, "the listing"),
                    **docs.errors(400, *docs.COMMON),
                },
            }
        },
    }

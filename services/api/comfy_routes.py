"""ComfyUI on demand: restart it (answered once it is ready again) or have it free its memory;
every instance, or the one `?instance=i` names."""

from __future__ import annotations

import concurrent.futures

from flask import Blueprint, Response, request

from services.api import docs_parts as docs
from services.api.context import Api
from services.comfy.control import ComfyControl
from services.core import errors
from services.web.answers import json_response


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("comfy", __name__, url_prefix="/comfy")

    def chosen() -> list[ComfyControl]:
        asked = request.args.get("instance")
        if asked is None:
            return api.controls
        if not asked.isdigit() or int(asked) >= len(api.controls):
            raise errors.InvalidRequest(f"instance must be a number from 0 to {len(api.controls) - 1}")
        return [api.controls[int(asked)]]

    @routes.post("/restart")
    def restart() -> Response:
        """Its jobs in flight get comfy_restarted. Several instances restart side by side."""
        controls = chosen()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(controls)) as side_by_side:
            return json_response(_merged(list(side_by_side.map(ComfyControl.restart, controls))))

    @routes.post("/free")
    def free() -> Response:
        return json_response(_merged([control.free() for control in chosen()]))

    return routes


def _merged(answers: list[dict]) -> dict:
    """One instance's answer as it is; several: each key over all (the longest time, else all
    true), and each instance's own answer."""
    if len(answers) == 1:
        return answers[0]
    merged = {
        key: max(a[key] for a in answers) if key == "seconds" else all(a[key] for a in answers)
        for key in answers[0]
    }
    return {**merged, "instances": answers}


def paths() -> dict:
    """ComfyUI on demand."""
    return {
        "/comfy/restart": {
            "post": {
                "summary": "restart ComfyUI through supervisord; answers when it answers again",
                "parameters": [docs.INSTANCE],
                "responses": {
                    "200": docs.answer(docs.OBJECT, "restarted"),
                    **docs.errors(400, 409, 503, *docs.COMMON),
                },
            }
        },
        "/comfy/free": {
            "post": {
                "summary": "have ComfyUI unload its models and free memory",
                "parameters": [docs.INSTANCE],
                "responses": {
                    "200": docs.answer(docs.OBJECT, "freed"),
                    **docs.errors(400, 409, 503, *docs.COMMON),
                },
            }
        },
    }

"""What a plain job asks for, checked before anything touches ComfyUI: its workflow, its input
images (services.jobs.input_images) and the options a template call takes too.

ComfyUI answers a non-dict prompt with a bare 500 and a graph export with a confusing
`no_prompt`, so the shape is validated here and every refusal says what to fix.
"""

from __future__ import annotations

import math
from typing import Any

from services.core import errors
from services.core.config import RESPONSE_FORMATS
from services.core.job_spec import JobRequest, kind, looks_like_graph_export, validate_workflow
from services.jobs import input_images


def parse(
    payload: Any,
    *,
    default_timeout_s: float,
    no_history_default: bool,
    output_format: str = "worker",
    fetch: input_images.Fetch | None = None,
) -> JobRequest:
    """Turn a decoded payload into a `JobRequest`, or raise the error that says what is wrong.
    `fetch` gets the bytes of an image given by URL; without it such images are refused."""
    if not isinstance(payload, dict):
        raise errors.InvalidRequest(f"the payload must be a JSON object, got {kind(payload)}")
    if "workflow" in payload:
        workflow = payload["workflow"]
        given = payload
    elif looks_like_graph_export(payload) or _looks_like_workflow(payload):
        workflow, given = payload, {}
    else:
        raise errors.InvalidRequest("the payload has no 'workflow' (an API-format ComfyUI workflow)")
    return JobRequest(
        workflow=validate_workflow(workflow),
        images=input_images.listed(given.get("images"), fetch),
        **options(
            given,
            default_timeout_s=default_timeout_s,
            no_history_default=no_history_default,
            output_format=output_format,
        ),
    )


def options(given: dict, *, default_timeout_s: float, no_history_default: bool, output_format: str) -> dict:
    """A job's options (a plain job's and a template call's alike) as `JobRequest` fields."""
    return {
        "no_history": _flag(given, "no_history", no_history_default),
        "timeout_s": _timeout(given.get("timeout_s"), default_timeout_s),
        "output_format": _output_format(given.get("output_format"), output_format),
        "comfy_org_api_key": _api_key(given.get("comfy_org_api_key")),
        "models": _models(given.get("models")),
    }


MAX_MODELS = 64
MAX_API_KEY = 4096


def _models(models: Any) -> tuple[dict, ...]:
    if models is None:
        return ()
    if (
        not isinstance(models, list)
        or len(models) > MAX_MODELS
        or not all(isinstance(m, dict) for m in models)
    ):
        raise errors.InvalidRequest(
            f"'models' must be a list of at most {MAX_MODELS} objects: "
            "{type, url | repo_id+filename+revision?, filename?, sha256?}"
        )
    return tuple(models)


def _flag(options: dict, key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise errors.InvalidRequest(f"'{key}' must be true or false")
    return value


def _timeout(value: Any, default: float) -> float:
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise errors.InvalidRequest("'timeout_s' must be a positive number of seconds")
    return min(float(value), default)


def _output_format(value: Any, default: str) -> str:
    if value is None:
        return default
    if value not in RESPONSE_FORMATS:
        raise errors.InvalidRequest(f"'output_format' must be one of: {', '.join(RESPONSE_FORMATS)}")
    return value


def _api_key(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isprintable() or len(value) > MAX_API_KEY:
        raise errors.InvalidRequest("'comfy_org_api_key' must be a string (a Comfy.org API key)")
    return value


def _looks_like_workflow(value: dict) -> bool:
    return bool(value) and all(isinstance(node, dict) and "class_type" in node for node in value.values())


SHAPES = {  # what parse() and options() check, as the OpenAPI document (services.api.openapi) shows it
    "RunRequest": {
        "description": "A plain job, a bare API-format workflow, or an envelope v1 (v2 is bytes)",
        "oneOf": [
            {
                "type": "object",
                "required": ["workflow"],
                "properties": {
                    "workflow": {"type": "object", "additionalProperties": {"type": "object"}},
                    "images": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string"},
                                "image": {"type": "string", "description": "base64, a data: prefix allowed"},
                                "url": {"type": "string", "description": "http(s), fetched by the worker"},
                            },
                        },
                    },
                    "no_history": {"type": "boolean"},
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                    "output_format": {"enum": list(RESPONSE_FORMATS)},
                    "comfy_org_api_key": {"type": "string", "maxLength": MAX_API_KEY},
                    "models": {
                        "type": "array",
                        "maxItems": MAX_MODELS,
                        "description": "models to make sure of on the volume first (fetched once, cached)",
                        "items": {"$ref": "#/components/schemas/DownloadItem"},
                    },
                    "webhook": {
                        "type": "string",
                        "maxLength": 2048,
                        "description": "async jobs: an http(s) URL told of the job's end by a signed POST "
                        "(Standard Webhooks; README: Webhooks); 400 invalid_webhook when not allowed",
                    },
                },
            },
            {
                "type": "object",
                "required": ["template"],
                "description": "a template call (GET /templates), with the job options above",
                "properties": {
                    "template": {"type": "string"},
                    "params": {"type": "object"},
                    "no_history": {"type": "boolean"},
                    "timeout_s": {"type": "number"},
                    "webhook": {"type": "string", "maxLength": 2048},
                },
            },
            {"$ref": "#/components/schemas/Envelope"},
        ],
    },
    "Result": {
        "description": "The job's result, or the sealed answer of an encrypted job",
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "prompt_id": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "outputs": {"type": "array", "items": {"type": "object"}},
            "history": {"type": "object"},
            "params": {"type": "object", "description": "a template call: the values used, drawn seeds too"},
            "encrypted": {"type": "boolean"},
            "nonce": {"type": "string"},
            "ciphertext": {"type": "string"},
        },
    },
}

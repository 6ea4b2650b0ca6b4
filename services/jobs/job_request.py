"""What a plain job asks for, checked before anything touches ComfyUI: its workflow, its input
images (services.jobs.input_images) and the options a template call takes too.

ComfyUI answers a non-dict prompt with a bare 500 and a graph export with a confusing
`no_prompt`, so the shape is validated here and every refusal says what to fix.
"""

from __future__ import annotations

from typing import Any

from services.core import errors
from services.core.config import RESPONSE_FORMATS
from services.core.job_spec import JobRequest, kind, looks_like_graph_export, validate_workflow
from services.core.schema_check import Validator
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


MAX_MODELS = 64
MAX_API_KEY = 4096
OPTIONS = {  # a job's options, declared once: options() checks a job against it, and the OpenAPI
    # document shows it (SHAPES); null is an option left out, which takes its default
    "no_history": {"type": "boolean", "description": "no trace of the job in ComfyUI's history"},
    "timeout_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "description": "at most JOB_TIMEOUT_S"},
    "output_format": {"enum": [*RESPONSE_FORMATS, None]},
    "comfy_org_api_key": {"type": ["string", "null"], "maxLength": MAX_API_KEY},
    "models": {
        "type": ["array", "null"],
        "maxItems": MAX_MODELS,
        "description": "models to make sure of on the volume first (fetched once, cached), each "
        "a DownloadItem",
        "items": {"type": "object"},
    },
}
_REFUSALS = {  # what a broken option is told, in words of our own (never its value: a secret key)
    "no_history": "'no_history' must be true or false",
    "timeout_s": "'timeout_s' must be a positive number of seconds",
    "output_format": f"'output_format' must be one of: {', '.join(RESPONSE_FORMATS)}",
    "comfy_org_api_key": "'comfy_org_api_key' must be a string (a Comfy.org API key)",
    "models": f"'models' must be a list of at most {MAX_MODELS} objects: "
    "{type, url | repo_id+filename+revision?, filename?, sha256?}",
}
_CHECK = Validator({"type": "object", "properties": OPTIONS})


def options(given: dict, *, default_timeout_s: float, no_history_default: bool, output_format: str) -> dict:
    """A job's options (a plain job's and a template call's alike) as `JobRequest` fields,
    checked against OPTIONS; the first option broken, in OPTIONS' order, is refused."""
    broken = {str(p.absolute_path[0]) for p in _CHECK.iter_errors(given) if p.absolute_path}
    if broken:
        raise errors.InvalidRequest(next(_REFUSALS[name] for name in OPTIONS if name in broken))
    timeout_s, api_key = given.get("timeout_s"), given.get("comfy_org_api_key") or None
    if api_key is not None and not api_key.isprintable():
        raise errors.InvalidRequest(_REFUSALS["comfy_org_api_key"])
    return {
        "no_history": given.get("no_history", no_history_default),
        "timeout_s": default_timeout_s if timeout_s is None else min(float(timeout_s), default_timeout_s),
        "output_format": given.get("output_format") or output_format,
        "comfy_org_api_key": api_key,
        "models": tuple(given.get("models") or ()),
    }


def _looks_like_workflow(value: dict) -> bool:
    return bool(value) and all(isinstance(node, dict) and "class_type" in node for node in value.values())


SHAPES = {  # the OpenAPI document's (services.api.openapi): a plain job's options are OPTIONS
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
                    **OPTIONS,
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
                    **OPTIONS,
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

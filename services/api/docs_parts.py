"""The pieces the pod API's route modules describe their routes with (each module's `paths()`),
assembled into one OpenAPI document by services.api.openapi."""

from __future__ import annotations

from services.core import errors as worker_errors
from services.jobs.envelopes import MEDIA_TYPE as V2_MEDIA_TYPE
from services.jobs.envelopes import PLAIN_MEDIA_TYPE as PARTS_MEDIA_TYPE

ERROR = {"$ref": "#/components/schemas/Error"}
BYTES = {"schema": {"type": "string", "format": "binary"}}


def answer(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def sealable(responses: dict) -> dict:
    """A job's answers: a request in bytes (an envelope v2 or plain parts, README: Encryption) is
    answered in its media type, the result and the job's errors alike."""
    in_bytes = {V2_MEDIA_TYPE: BYTES, PARTS_MEDIA_TYPE: BYTES}
    return {
        status: {**answer, "content": {**answer["content"], **in_bytes}} if status != "202" else answer
        for status, answer in responses.items()
    }


def errors(*statuses: int) -> dict:
    """The error answers of a route: each status with the codes services.core.errors gives it."""
    codes = worker_errors.codes_by_status()
    return {str(status): answer(ERROR, ", ".join(codes[status])) for status in statuses}


COMMON = (401, 403, 405, 413)  # a key's scope: services.api.access_control
OBJECT = {"type": "object"}
HEALTH = {"$ref": "#/components/schemas/Health"}
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
ASYNC = {
    "name": "async",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["1", "true"]},
}
DOWNLOAD_ID = {"name": "download_id", "in": "path", "required": True, "schema": {"type": "string"}}
INSTANCE = {
    "name": "instance",
    "in": "query",
    "required": False,
    "description": "one ComfyUI instance (0-based, COMFY_INSTANCES); every instance without it",
    "schema": {"type": "string"},
}

DOWNLOADS = {
    "type": "object",
    "required": ["downloads"],
    "properties": {"downloads": {"type": "array", "items": {"$ref": "#/components/schemas/Download"}}},
}

DOWNLOAD_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/DownloadItem"}},
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {
                            "items": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/DownloadItem"},
                            },
                            "wait": {"type": "boolean"},
                        },
                    },
                ]
            }
        }
    },
}


ENDPOINT_ID = {"name": "endpoint_id", "in": "path", "required": True, "schema": {"type": "string"}}
RUNPOD_JOB = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]},
        "output": {},
        "error": {"type": "string"},
    },
}

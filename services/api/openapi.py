"""The pod API's OpenAPI 3 document, served at /openapi.json and checked by schemathesis."""

from __future__ import annotations

from services.core import errors
from services.jobs.envelopes import MEDIA_TYPE as V2_MEDIA_TYPE
from services.jobs.envelopes import PLAIN_MEDIA_TYPE as PARTS_MEDIA_TYPE
from services.models.model_store import TYPES

ERROR = {"$ref": "#/components/schemas/Error"}
BYTES = {"schema": {"type": "string", "format": "binary"}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _sealable(responses: dict) -> dict:
    """A job's answers: a request in bytes (an envelope v2 or plain parts, README: Encryption) is
    answered in its media type, the result and the job's errors alike."""
    in_bytes = {V2_MEDIA_TYPE: BYTES, PARTS_MEDIA_TYPE: BYTES}
    return {
        status: {**answer, "content": {**answer["content"], **in_bytes}} if status != "202" else answer
        for status, answer in responses.items()
    }


def _errors(*statuses: int) -> dict:
    """The error answers of a route: each status with the codes services.core.errors gives it."""
    codes = errors.codes_by_status()
    return {str(status): _json(ERROR, ", ".join(codes[status])) for status in statuses}


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

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "<code>: <detail>"},
            "template": {"type": "string", "description": "invalid_params, template_error: the template"},
            "details": {
                "type": "array",
                "description": "invalid_params: every problem",
                "items": {
                    "type": "object",
                    "required": ["param", "rule", "message"],
                    "properties": {
                        "param": {"type": ["string", "null"]},
                        "rule": {
                            "type": "string",
                            "description": "the JSON Schema keyword, image or comfyui",
                        },
                        "message": {"type": "string"},
                    },
                },
            },
            "node_errors": {"type": "object", "description": "template_error: ComfyUI's node errors"},
        },
    },
    "SealedAnswer": {
        "type": "object",
        "required": ["encrypted", "nonce", "ciphertext"],
        "properties": {
            "encrypted": {"type": "boolean"},
            "nonce": {"type": "string"},
            "ciphertext": {"type": "string"},
        },
    },
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
                    "timeout_s": {"type": "number"},
                    "models": {
                        "type": "array",
                        "maxItems": 64,
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
            {
                "type": "object",
                "required": ["encrypted", "epk", "nonce", "ciphertext"],
                "properties": {
                    "encrypted": {"type": "boolean", "enum": [True]},
                    "kid": {
                        "type": "string",
                        "description": "the worker key it is sealed to (GET /healthz keys)",
                    },
                    "epk": {"type": "string"},
                    "nonce": {"type": "string"},
                    "ciphertext": {"type": "string"},
                },
            },
        ],
    },
    "Result": {
        "description": "The job's result, or the sealed answer of an encrypted job",
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "prompt_id": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "outputs": {"type": "array", "items": OBJECT},
            "history": OBJECT,
            "params": {"type": "object", "description": "a template call: the values used, drawn seeds too"},
            "encrypted": {"type": "boolean"},
            "nonce": {"type": "string"},
            "ciphertext": {"type": "string"},
        },
    },
    "AsyncJob": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"]},
            "progress": {"type": ["object", "null"]},
            "result": OBJECT,
            "http_status": {"type": "integer"},
            "status_url": {"type": "string"},
            "webhook": {
                "type": "object",
                "description": "the delivery of the job's webhook (never its URL)",
                "properties": {
                    "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                    "attempts": {"type": "integer"},
                    "last_status": {"type": ["integer", "null"]},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "server_public_key_b64": {"type": ["string", "null"]},
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kid", "public_key_b64", "current"],
                    "properties": {
                        "kid": {
                            "type": "string",
                            "description": "first 16 hex digits of SHA-256 of the public key",
                        },
                        "public_key_b64": {"type": "string"},
                        "current": {"type": "boolean"},
                    },
                },
            },
            "draining": {"type": "boolean"},
        },
    },
    "DownloadItem": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": list(TYPES), "description": "a ComfyUI model folder name"},
            "url": {"type": "string"},
            "repo_id": {"type": "string"},
            "filename": {"type": "string"},
            "revision": {"type": "string"},
            "target": {"type": "string"},
            "sha256": {"type": "string"},
        },
    },
    "Download": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "filename": {"type": "string"},
            "source": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "exists", "failed"]},
            "bytes_done": {"type": "integer"},
            "total": {"type": ["integer", "null"]},
            "rate_bytes_s": {"type": "integer"},
            "error": {"type": ["string", "null"]},
        },
    },
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


def _probe_paths() -> dict:
    """What probes, load balancers and Prometheus call."""
    return {
        "/healthz": {
            "get": {
                "summary": "liveness, the public keys, and ComfyUI's state",
                "description": "server_public_key_b64 is the current worker key; keys lists every key "
                "the worker opens envelopes with: [{kid, public_key_b64, current}] (a rotation keeps "
                "previous keys). An envelope may carry kid; an unknown one answers 400 unknown_key.",
                "security": [],
                "responses": {"200": _json(HEALTH, "health"), **_errors(405)},
            }
        },
        "/readyz": {
            "get": {
                "summary": "200 when a job would run now (open: probes send no token)",
                "security": [],
                "responses": {
                    "200": _json(OBJECT, "ready"),
                    "503": _json(OBJECT, "not ready"),
                    **_errors(405),
                },
            }
        },
        "/ping": {
            "get": {
                "summary": "the API process alone",
                "responses": {"200": _json(OBJECT, "alive"), **_errors(*COMMON)},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": _json(OBJECT, "OpenAPI 3")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format)",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(*COMMON),
                },
            }
        },
    }


def _drain_paths() -> dict:
    """Planned restarts."""
    state = _json(OBJECT, "{draining, since}")
    return {
        "/drain": {
            "post": {
                "summary": "take no new work (503 draining), finish what was accepted; /readyz answers 503",
                "responses": {"200": state, **_errors(*COMMON)},
            },
            "delete": {
                "summary": "take work again",
                "responses": {"200": state, **_errors(*COMMON)},
            },
        }
    }


def _comfy_paths() -> dict:
    """ComfyUI on demand."""
    return {
        "/comfy/restart": {
            "post": {
                "summary": "restart ComfyUI through supervisord; answers when it answers again",
                "parameters": [INSTANCE],
                "responses": {"200": _json(OBJECT, "restarted"), **_errors(400, 409, 503, *COMMON)},
            }
        },
        "/comfy/free": {
            "post": {
                "summary": "have ComfyUI unload its models and free memory",
                "parameters": [INSTANCE],
                "responses": {"200": _json(OBJECT, "freed"), **_errors(400, 409, 503, *COMMON)},
            }
        },
    }


def _job_paths() -> dict:
    """Jobs: run, poll, cancel."""
    return {
        "/run": {
            "post": {
                "summary": "run a workflow (or start it with ?async=1)",
                "parameters": [ASYNC],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}},
                        V2_MEDIA_TYPE: BYTES,
                        PARTS_MEDIA_TYPE: BYTES,
                    },
                },
                "responses": _sealable(
                    {
                        "200": _json({"$ref": "#/components/schemas/Result"}, "the result"),
                        "202": _json({"$ref": "#/components/schemas/AsyncJob"}, "started"),
                        **_errors(400, 404, 409, 422, 429, 500, 502, 503, 504, 507, *COMMON),
                    }
                ),
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "state, progress and result of an async job",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/AsyncJob"}, "the job"),
                    **_errors(404, 503, *COMMON),
                },
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "summary": "cancel an async job (interrupts ComfyUI)",
                "parameters": [JOB_ID],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/AsyncJob"}, "the job"),
                    **_errors(404, 503, *COMMON),
                },
            }
        },
    }


def _template_paths(templates: list[dict]) -> dict:
    """The listing, one template's description, a call by name, and an operation per template."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    paths = {
        "/templates": {
            "get": {
                "summary": "the templates that serve, and those rejected with why",
                "tags": ["templates"],
                "responses": {"200": _json(OBJECT, "the templates"), **_errors(*COMMON)},
            }
        },
        "/templates/{name}": {
            "get": {
                "summary": "one template: its parameters' schema, defaults and an example body",
                "tags": ["templates"],
                "parameters": [name],
                "responses": {"200": _json(OBJECT, "the template"), **_errors(404, *COMMON)},
            }
        },
        "/templates/{name}/run": _template_run("run a template by name", [name], OBJECT),
    }
    for template in templates:
        summary = f"{template['name']}: {template['description']}"[:120]
        run = _template_run(summary, [], template["schema"], template["example"])
        run["post"]["operationId"] = "run_" + template["name"].replace("-", "_")
        paths[f"/templates/{template['name']}/run"] = run
    return paths


def _template_run(summary: str, parameters: list, body: dict, example: dict | None = None) -> dict:
    """A call: the parameters as the body (or an envelope sealing {template, params})."""
    media = {"schema": body, **({"example": example} if example is not None else {})}
    return {
        "post": {
            "summary": summary,
            "tags": ["templates"],
            "parameters": [*parameters, ASYNC],
            "requestBody": {
                "required": True,
                "content": {"application/json": media, V2_MEDIA_TYPE: BYTES, PARTS_MEDIA_TYPE: BYTES},
            },
            "responses": _sealable(
                {
                    "200": _json({"$ref": "#/components/schemas/Result"}, "the result, with `params`"),
                    "202": _json({"$ref": "#/components/schemas/AsyncJob"}, "started"),
                    **_errors(400, 404, 409, 422, 429, 500, 502, 503, 504, 507, *COMMON),
                }
            ),
        }
    }


def _model_paths() -> dict:
    """The model volume."""
    return {
        "/download": {
            "post": {
                "summary": "download models into COMFYUI_MODEL_DIR",
                "requestBody": DOWNLOAD_BODY,
                "responses": {
                    "200": _json(DOWNLOADS, "finished (wait)"),
                    "202": _json(DOWNLOADS, "started"),
                    **_errors(400, 429, 503, *COMMON),
                },
            }
        },
        "/download/{download_id}": {
            "get": {
                "summary": "one download's state and progress",
                "parameters": [DOWNLOAD_ID],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Download"}, "the download"),
                    **_errors(404, *COMMON),
                },
            }
        },
        "/downloads": {
            "get": {
                "summary": "every known download",
                "responses": {"200": _json(DOWNLOADS, "downloads"), **_errors(*COMMON)},
            }
        },
        "/models/ls": {
            "get": {
                "summary": "the model volume",
                "parameters": [
                    {"name": "type", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {"200": _json(OBJECT, "the listing"), **_errors(400, *COMMON)},
            }
        },
    }


def document(templates: list[dict] = ()) -> dict:
    """`templates`: one operation each, {name, description, schema, example}; its request body is
    the schema a call is validated with."""
    paths = {
        **_probe_paths(),
        **_drain_paths(),
        **_job_paths(),
        **_template_paths(templates),
        **_model_paths(),
        **_comfy_paths(),
        **_runpod_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "comfy-worker pod API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "API_KEY"}},
        },
        "security": [{"bearer": []}],
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


def _runpod_paths() -> dict:
    """RunPod's job routes, for clients written against a RunPod endpoint (worker-comfyui's)."""
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {"input": {"$ref": "#/components/schemas/RunRequest"}},
                }
            }
        },
    }
    job = _json(RUNPOD_JOB, "the job as RunPod reports it (a failed job is 200 with status FAILED)")
    return {
        "/v2/{endpoint_id}/runsync": {
            "post": {
                "summary": "RunPod-style: run and wait (endpoint_id is any name)",
                "parameters": [ENDPOINT_ID],
                "requestBody": body,
                "responses": {"200": job, **_errors(400, 429, 503, *COMMON)},
            }
        },
        "/v2/{endpoint_id}/run": {
            "post": {
                "summary": "RunPod-style: start a job",
                "parameters": [ENDPOINT_ID],
                "requestBody": body,
                "responses": {"200": job, **_errors(400, 429, 503, *COMMON)},
            }
        },
        "/v2/{endpoint_id}/status/{job_id}": {
            method: {
                "summary": "RunPod-style: a job's status and output",
                "parameters": [ENDPOINT_ID, JOB_ID],
                "responses": {"200": job, **_errors(404, 503, *COMMON)},
            }
            for method in ("get", "post")
        },
        "/v2/{endpoint_id}/cancel/{job_id}": {
            "post": {
                "summary": "RunPod-style: cancel a job",
                "parameters": [ENDPOINT_ID, JOB_ID],
                "responses": {"200": job, **_errors(404, 503, *COMMON)},
            }
        },
    }

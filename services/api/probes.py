"""What platforms, load balancers and Prometheus ask: liveness, readiness, metrics (the OpenAPI
document: services.api.openapi). `/healthz`, `/readyz`, `/openapi.json` and its Swagger UI at `/docs` are open without
a key (probes send no token; the UI sends the key a user enters; services.api.access_control);
they never wait on a busy ComfyUI (services.comfy.health)."""

from __future__ import annotations

from flask import Blueprint, Response

from services.api import docs_parts as docs
from services.api.context import Api
from services.core import drain
from services.jobs.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from services.web.answers import json_response


def blueprint(api: Api) -> Blueprint:
    routes = Blueprint("probes", __name__)
    settings = api.settings

    @routes.get("/healthz")
    def healthz() -> Response:
        return json_response(
            {
                "ok": True,
                "mode": settings.launch_mode,
                "model_dir": settings.model_dir,
                "server_public_key_b64": api.public_key,
                "keys": api.worker.pipeline.keyring.published() if api.worker.pipeline.keyring else [],
                "dry_run": settings.dry_run,
                "encryption_required": settings.encryption_required,
                "comfy": api.health.read(),
                "cuda": api.cuda,
                "shared_state": api.shared_state(),
                "draining": drain.since(settings.run_layout) is not None,
                "templates": api.worker.templates.view(),
            }
        )

    @routes.get("/readyz")
    def readyz() -> Response:
        comfy_health = api.health.read()
        state = api.worker.state
        draining = drain.since(settings.run_layout) is not None
        busy = api.worker.pool.full()  # MAX_QUEUE_DEPTH jobs wait: a load balancer routes elsewhere
        up = (settings.dry_run or comfy_health["ready"]) and (state is None or state.up)
        ready = up and not draining and not busy
        body = {
            "ready": ready,
            "comfy": comfy_health,
            "shared_state": api.shared_state(),
            "draining": draining,
            "busy": busy,
        }
        return json_response(body, 200 if ready else 503)

    @routes.get("/ping")
    def ping() -> Response:
        """Liveness of the API process alone; also the benchmarks' do-nothing baseline."""
        return json_response({"ok": True})

    @routes.get("/metrics")
    def metrics_page() -> Response:
        """Prometheus text format, for keys with the `metrics` scope."""
        return Response(api.metrics.render(), mimetype=METRICS_CONTENT_TYPE)

    return routes


def paths() -> dict:
    """What probes, load balancers and Prometheus call."""
    return {
        "/healthz": {
            "get": {
                "summary": "liveness, the public keys, and ComfyUI's state",
                "description": "server_public_key_b64 is the current worker key; keys lists every key "
                "the worker opens envelopes with: [{kid, public_key_b64, current}] (a rotation keeps "
                "previous keys). An envelope may carry kid; an unknown one answers 400 unknown_key.",
                "security": [],
                "responses": {"200": docs.answer(docs.HEALTH, "health"), **docs.errors(405)},
            }
        },
        "/readyz": {
            "get": {
                "summary": "200 when a job would run now (open: probes send no token)",
                "security": [],
                "responses": {
                    "200": docs.answer(docs.OBJECT, "ready"),
                    "503": docs.answer(docs.OBJECT, "not ready"),
                    **docs.errors(405),
                },
            }
        },
        "/ping": {
            "get": {
                "summary": "the API process alone",
                "responses": {"200": docs.answer(docs.OBJECT, "alive"), **docs.errors(*docs.COMMON)},
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
                    **docs.errors(*docs.COMMON),
                },
            }
        },
    }


SHAPES = {  # declared once: the OpenAPI document (services.api.openapi) shows them
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
}

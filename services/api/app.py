"""The pod API: a Flask app factory over the worker (services.jobs.worker), served by gunicorn
with gevent workers. It authorizes (access_control) and maps errors (services.web.answers); the routes are blueprints by concern:

    probes.py         /healthz /readyz /ping /metrics
    openapi.py        /openapi.json (assembled from each blueprint's paths)
    drain_routes.py   /drain (POST, DELETE)
    job_routes.py     /run /jobs/<id> /jobs/<id>/cancel
    model_routes.py   /download /download/<id> /downloads /models/ls
    comfy_routes.py   /comfy/restart /comfy/free
    template_routes.py /templates /templates/<name> /templates/<name>/run (and /docs: Swagger UI)
    runpod_routes.py  /v2/<id>/runsync /run /status/<id> /cancel/<id>
"""

from __future__ import annotations

import logging

from flask import Flask
from flask_swagger_ui import get_swaggerui_blueprint

from services.api import (
    access_control,
    comfy_routes,
    drain_routes,
    job_routes,
    model_routes,
    openapi,
    probes,
    runpod_routes,
    template_routes,
)
from services.api.context import Api
from services.comfy import devices, driver
from services.comfy.control import ComfyControl
from services.comfy.health import ComfyHealth
from services.core import config, logs
from services.core.config import Settings
from services.jobs import envelopes
from services.jobs.access import Keys
from services.jobs.metrics import Metrics
from services.jobs.worker import build_worker, job_store
from services.web import answers

log = logging.getLogger("worker.api")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; gunicorn calls this with no arguments, tests pass their own settings."""
    if settings is None:
        settings = config.load_or_exit("api")
        logs.setup("api", settings.log_format)
        if not settings.api_key and not settings.api_keys_file:
            log.warning(
                "API_KEY and API_KEYS_FILE are not set: every route is open to whoever reaches port %d",
                settings.api_port,
            )
        try:
            keys = Keys(settings)
        except config.ConfigError as exc:  # API_KEYS_FILE went bad after the entrypoint checked it
            log.error("configuration error: %s", exc)
            raise SystemExit(2) from None
    else:
        keys = Keys(settings)
    api = _build(settings, keys)
    app = Flask("comfy-worker")
    app.extensions["comfy_worker_jobs"] = api.jobs  # closed by gunicorn's worker_exit (gunicorn_conf)
    access_control.install(app, api)  # first: who calls, then whether the pod takes work
    app.before_request(lambda: drain_routes.refuse_new_work(api))
    for module in (
        probes,
        openapi,
        drain_routes,
        job_routes,
        template_routes,
        model_routes,
        comfy_routes,
        runpod_routes,
    ):
        app.register_blueprint(module.blueprint(api))
    app.register_blueprint(
        get_swaggerui_blueprint(
            access_control.DOCS, "/openapi.json", {"app_name": "comfy-worker", "tryItOutEnabled": True}
        )
    )
    answers.install(app, settings, log)
    return app


def _build(settings: Settings, keys: Keys) -> Api:
    """The worker, observed by the metrics, and what the routes need beside it."""
    metrics = Metrics(settings, lambda: health.read()["instances"], lambda: worker.pool.waiting)
    worker = build_worker(settings, observer=metrics, keys=keys)
    health = ComfyHealth(settings, worker.pool)
    worker.pool.watch(health.changed)
    metrics.watch_models(worker.models)
    worker.pool.time_jobs(metrics.job_timed)
    jobs = job_store(worker)
    if worker.state is not None:
        metrics.watch_shared(jobs)
    controls = [
        ComfyControl(instance.settings, instance.executor.client, lambda n=n: health.instance_ready(n))
        for n, instance in enumerate(worker.pool.instances)
    ]
    public_key = envelopes.public_key_of(settings.private_key_b64) if settings.private_key_b64 else None
    return Api(worker, jobs, health, metrics, controls, public_key, _cuda(settings), keys, worker.quotas)


def _cuda(settings: Settings) -> dict | None:
    """Read once: every instance shares the host's driver and ComfyUI's torch."""
    if settings.dry_run or devices.of(settings).vendor != "nvidia":
        return None
    return driver.check(driver.host_driver(), driver.torch_cuda(settings.comfy_python)).view()

"""The pod API: a thin Flask adapter over the job pipeline.

It authorizes, decodes the body and maps pipeline replies and `WorkerError`s to HTTP; all job
logic lives in `services.jobs.pipeline`. Served by gunicorn with gevent workers.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import json
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from services.api import openapi, runpod_routes
from services.comfy import devices, supervisor_state
from services.comfy.client import ComfyClient
from services.comfy.control import ComfyControl
from services.comfy.pool import ComfyPool
from services.comfy.warmup import start_warmup
from services.core import config, errors, json_text, logs
from services.core.config import Settings
from services.core.offload import offload
from services.jobs import envelope
from services.jobs.async_jobs import AsyncJobs
from services.jobs.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from services.jobs.metrics import Metrics
from services.jobs.pipeline import Pipeline
from services.models import model_store
from services.models.downloads import Downloads
from services.models.job_models import JobModels

log = logging.getLogger("worker.api")
OPEN_ROUTES = {"/healthz", "/readyz", "/openapi.json"}  # what platform probes and load balancers call
HEALTH_CACHE_S = 1.0
HEALTH_STALE_S = 10.0  # an older value is never answered: the probe waits for a fresh one


def json_response(body: Any, status: int = 200, size: int = 0) -> Response:
    """`size`: bytes of outputs or ciphertext the body carries; large ones serialize off the hub,
    spliced (services.core.json_text); the rest, every probe among them, as plain compact JSON."""
    text = offload(json_text.dumps, body, size=size) if size >= json_text.SPLICED else _dumps(body)
    return Response(text, status=status, mimetype="application/json")


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def payload_response(body: dict, status: int = 200) -> Response:
    """A body that may carry a job's result (outputs, ciphertext), directly or under `result`
    (pod async jobs) or `output` (the RunPod-shaped routes)."""
    return json_response(body, status, size=_payload_size(body))


def _payload_size(body: dict) -> int:
    """Bytes of output data or ciphertext in a result."""
    inner = next((body[k] for k in ("result", "output") if isinstance(body.get(k), dict)), body)
    outputs = next((inner[k] for k in ("outputs", "images") if isinstance(inner.get(k), list)), [])
    return len(str(inner.get("ciphertext") or "")) + sum(
        len(str(o.get("data") or "")) for o in outputs if isinstance(o, dict)
    )


def error_response(exc: errors.WorkerError) -> Response:
    return json_response(exc.to_dict(), exc.http_status)


class ComfyHealth:
    """Each ComfyUI instance's process state (from supervisord), device, warm-up, whether it runs
    a job, and readiness (it answers and the warm-up of its current start ended); ready while one
    instance is. The top-level state and warm-up are instance 0's, as with a single ComfyUI.

    A probe never waits on a busy ComfyUI: once the cached value is older than HEALTH_CACHE_S
    (and younger than HEALTH_STALE_S) it is answered while one refresh runs beside it."""

    def __init__(self, settings: Settings, pool: ComfyPool | None) -> None:
        self.settings = settings
        self.pool = pool
        self.gpus = devices.of(settings)
        numbers = range(settings.instance_count)
        self.clients = (
            [i.executor.client for i in pool.instances]
            if pool
            else [ComfyClient(settings.instance(n).comfy_url) for n in numbers]
        )
        self._cached: tuple[float, dict] | None = None
        self._refreshing = threading.Lock()

    def read(self, fresh: bool = False) -> dict:
        cached = self._cached
        if fresh or cached is None or time.monotonic() - cached[0] >= HEALTH_STALE_S:
            return self._busy(self._refresh())
        if time.monotonic() - cached[0] >= HEALTH_CACHE_S and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh, args=(self._refreshing,), daemon=True).start()
        return self._busy(cached[1])

    def _busy(self, value: dict) -> dict:
        """Whether an instance runs a job, as of now."""
        if self.pool is None:
            return value
        jobs = [instance.jobs for instance in self.pool.instances]
        return {**value, "instances": [{**view, "busy": jobs[view["id"]] > 0} for view in value["instances"]]}

    def _refresh(self, held: threading.Lock | None = None) -> dict:
        try:
            now = time.monotonic()
            infos = supervisor_state.process_infos(self.settings.supervisor_socket)
            views = [self._instance(number, infos) for number in range(self.settings.instance_count)]
            first = views[0]
            value = {
                "state": first["state"],
                "ready": any(view["ready"] for view in views),
                "warmup": first["warmup"],
                "instances": views,
            }
            self._cached = (now, value)
            return value
        finally:
            if held is not None:
                held.release()

    def _instance(self, number: int, infos: dict[str, dict]) -> dict:
        program = self.settings.instance(number).comfy_program
        state = infos[program]["statename"] if program in infos else "NO_SUPERVISOR"
        warmup = self.pool.instances[number].warmup if self.pool else None
        ready = not self.settings.dry_run and state == "RUNNING" and self.clients[number].ready(timeout=2.0)
        if warmup is not None:
            ready = ready and warmup.ready()
        return {
            "id": number,
            "device": self.gpus.describe(number),
            "state": state,
            "ready": ready,
            "busy": False,
            "warmup": warmup.view() if warmup else None,
        }


def create_app(settings: Settings | None = None, pipeline: Pipeline | None = None) -> Flask:
    """Build the app; gunicorn calls this with no arguments, tests pass their own settings."""
    if settings is None:
        logs.setup("api")
        settings = config.load()
        if not settings.api_key:
            log.warning(
                "API_KEY is not set: every route is open to whoever reaches port %d", settings.api_port
            )
    pool = ComfyPool.of(settings, start_warmup) if pipeline is None else None  # tests bring their own
    health = ComfyHealth(settings, pool)
    metrics = Metrics(settings, lambda: health.read()["instances"], lambda: pool.waiting if pool else 0)
    store = shared_jobs = None
    if settings.state_url:  # imported only here: redis is for workers that share a fleet's state
        from services.jobs.shared_jobs import SharedJobs
        from services.jobs.state_store import StateStore

        store = StateStore(settings)
    downloads = Downloads(settings, observer=metrics)
    job_models = JobModels(settings, downloads)
    metrics.watch_models(job_models)
    pipeline = pipeline or Pipeline(settings, pool, observer=metrics, shared=store, models=job_models)
    if store is not None:
        shared_jobs = SharedJobs(settings, pipeline, store, pool.spare if pool else lambda own: 1 - own)
        metrics.watch_shared(shared_jobs)
    jobs = shared_jobs or AsyncJobs(pipeline)
    controls = [
        ComfyControl(
            settings.instance(n), client, lambda n=n: health.read(fresh=True)["instances"][n]["ready"]
        )
        for n, client in enumerate(health.clients)
    ]
    public_key = envelope.public_key_of(settings.private_key_b64) if settings.private_key_b64 else None

    app = Flask("comfy-worker")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 1024 * 1024
    app.extensions["comfy_worker_jobs"] = jobs  # closed by gunicorn's worker_exit (gunicorn_conf)

    def shared_state() -> dict | None:
        """Whether the fleet's Redis (STATE_URL) answered its last call; None without one."""
        return {"up": store.up} if store else None

    @app.before_request
    def authorize() -> Response | None:
        if settings.api_key is None or request.path in OPEN_ROUTES:
            return None
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {settings.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(errors.Unauthorized("send 'Authorization: Bearer <API_KEY>'"))
        return None

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response(
            {
                "ok": True,
                "mode": settings.launch_mode,
                "model_dir": settings.model_dir,
                "server_public_key_b64": public_key,
                "dry_run": settings.dry_run,
                "encryption_required": settings.encryption_required,
                "comfy": health.read(),
                "shared_state": shared_state(),
            }
        )

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return json_response(openapi.document())

    @app.get("/ping")
    def ping() -> Response:
        """Liveness of the API process alone; also the benchmarks' do-nothing baseline."""
        return json_response({"ok": True})

    def chosen_controls() -> list[ComfyControl]:
        """Every instance's, or the one `?instance=i` names."""
        asked = request.args.get("instance")
        if asked is None:
            return controls
        if not asked.isdigit() or int(asked) >= len(controls):
            raise errors.InvalidRequest(f"instance must be a number from 0 to {len(controls) - 1}")
        return [controls[int(asked)]]

    @app.post("/comfy/restart")
    def comfy_restart() -> Response:
        """Answers once ComfyUI answers again; its jobs in flight get comfy_restarted. Several
        instances restart side by side."""
        chosen = chosen_controls()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen)) as side_by_side:
            return json_response(_merged(list(side_by_side.map(ComfyControl.restart, chosen))))

    @app.post("/comfy/free")
    def comfy_free() -> Response:
        return json_response(_merged([control.free() for control in chosen_controls()]))

    @app.get("/metrics")
    def metrics_page() -> Response:
        """Prometheus text format; behind API_KEY like every route but the probes."""
        return Response(metrics.render(), mimetype=METRICS_CONTENT_TYPE)

    @app.get("/readyz")
    def readyz() -> Response:
        comfy_health = health.read()
        ready = (settings.dry_run or comfy_health["ready"]) and (store is None or store.up)
        return json_response(
            {"ready": ready, "comfy": comfy_health, "shared_state": shared_state()}, 200 if ready else 503
        )

    @app.post("/run")
    def run() -> Response:
        if request.args.get("async") in ("1", "true"):
            job = jobs.start(_json_body())
            return json_response({"id": job.id, "state": job.state, "status_url": f"/jobs/{job.id}"}, 202)
        reply = pipeline.run(_json_body())
        return payload_response(reply.body, reply.status)

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Response:
        job = jobs.get(job_id)
        if job is None:
            raise errors.JobNotFound("no such job (ended jobs are kept for JOB_TTL_S, an hour by default)")
        return payload_response(job.view())

    @app.post("/jobs/<job_id>/cancel")
    def job_cancel(job_id: str) -> Response:
        job = jobs.cancel(job_id)
        if job is None:
            raise errors.JobNotFound("no such job")
        return json_response(job.view())

    @app.post("/download")
    def download() -> Response:
        body = _json_body()
        items = body.get("items") if isinstance(body, dict) else body
        started = downloads.submit(items)
        if isinstance(body, dict) and body.get("wait") is True:
            for item in started:
                item.ended.wait()
            return json_response({"downloads": [d.view() for d in started]})
        return json_response({"downloads": [d.view() for d in started]}, 202)

    @app.get("/download/<download_id>")
    def download_status(download_id: str) -> Response:
        return json_response(downloads.get(download_id).view())

    @app.get("/downloads")
    def download_list() -> Response:
        return json_response({"downloads": [d.view() for d in downloads.all()]})

    @app.get("/models/ls")
    def models_ls() -> Response:
        listing = downloads.cache.annotate(model_store.listing(settings.model_dir, request.args.get("type")))
        return json_response({"model_dir": settings.model_dir, "models": listing})

    app.register_blueprint(runpod_routes.blueprint(pipeline, jobs, _json_body, payload_response))

    @app.errorhandler(errors.WorkerError)
    def worker_error(exc: errors.WorkerError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            return error_response(
                errors.BodyTooLarge(f"the limit is {settings.max_request_mb} MB (MAX_REQUEST_MB)")
            )
        if exc.code == 404:
            return error_response(errors.NotFound(f"no route {request.path}"))
        if exc.code == 405:
            response = error_response(
                errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
            )
            response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
            return response
        return json_response({"error": f"http_{exc.code}: {exc.name}"}, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.error("unexpected %s on %s", type(exc).__name__, request.path)
        return error_response(errors.WorkerError("unexpected server error"))

    return app


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


def _json_body() -> Any:
    raw = request.get_data(cache=False)
    try:
        return offload(json.loads, raw, size=len(raw))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise errors.InvalidJson("the body is not valid JSON") from None

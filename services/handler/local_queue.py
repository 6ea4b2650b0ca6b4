"""A local stand-in for RunPod's queue, so serverless mode can be tried off RunPod: a small Flask
app (served by werkzeug's threaded server), started by supervisord only off RunPod.

It serves RunPod's public API under `/v2/<endpoint id>/` (run, runsync, status, stream, cancel,
health; the protocol is services.web.runpod_protocol, as on the pod API; answers, errors and key
checks are services.web's too) and the worker control
plane the runpod SDK polls (job-take, job-done, job-stream, job-stop, ping, under `/worker/`,
behind the token the entrypoint gave the SDK). The real SDK worker loop then runs unchanged
against it, exactly as on RunPod. Jobs live in services.handler.job_queue.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, g, request
from werkzeug.serving import make_server

from services.comfy.health import ComfyHealth
from services.core import config, drain, errors, json_text, logs
from services.core.config import Settings
from services.core.in_hand import CUT, InHand, Piece
from services.handler.job_queue import Job, Queue
from services.jobs import webhooks
from services.jobs.access import Key, Keys
from services.jobs.outcome import RUNPOD_FINAL
from services.jobs.quotas import Quotas, Slot
from services.jobs.webhooks import Webhooks
from services.web import answers, key_checks, runpod_protocol
from services.web.answers import json_response

if TYPE_CHECKING:
    from services.jobs.metrics import QueueMetrics

log = logging.getLogger("worker.local_queue")
TAKE_HOLD_S = 2.0  # how long a job-take long-poll is held open when the queue is empty
STOP_HOLD_S = 2.0
RUNSYNC_WAIT_MS = (1000, 90_000, 300_000)  # min, default, max of ?wait=


class LocalQueue:
    """The job table, its metrics and the settings the routes need."""

    def __init__(self, settings: Settings, worker_token: str) -> None:
        self.settings = settings
        self.worker_token = worker_token
        self.keys = Keys(settings)
        self.quotas = Quotas(settings)
        self.queue = Queue(on_end=self._job_ended, on_forget=self._let_go)
        self._metrics: QueueMetrics | None = None
        self.in_hand = InHand(settings.run_layout)
        self.webhooks = Webhooks(settings, in_hand=self.in_hand)
        self._held: dict[str, Piece] = {}  # job id -> held until its end was told its caller

    def accept(self, payload: dict, sync: bool, webhook: str | None, key: Key, slot: Slot) -> Job:
        """A job a drain waits for until it ended and its end was told: answered to its runsync
        call, read from its status or stream, handed to its webhook (whose delivery a drain
        waits for in turn), or its record dropped (RunPod's keep times, job_queue.KEEP_S)."""
        job = self.queue.submit(payload, sync=sync, webhook=webhook, owner=key.name, slot=slot)
        self._held[job.id] = self.in_hand.hold("queued-job", cut=functools.partial(self._cut, job.id))
        return job

    def told(self, job: Job) -> Job:
        """Its caller was shown `job`: once that is its end, a drain need not wait for it."""
        if job.status in RUNPOD_FINAL:
            self._let_go(job.id)
        return job

    def _let_go(self, job_id: str) -> None:
        if (piece := self._held.pop(job_id, None)) is not None:
            piece.release()

    def _cut(self, job_id: str) -> None:
        """The drain's deadline: a job no worker took fails; one running is the handler's to cut."""
        self.queue.fail_queued(job_id, CUT.message)
        self._let_go(job_id)

    def metrics(self) -> QueueMetrics:
        """Made on first use (a job ended, or a scrape): prometheus_client costs this process
        4 MiB, which an idle queue nobody scrapes need not pay."""
        if self._metrics is None:
            from services.jobs.metrics import QueueMetrics

            health = ComfyHealth(self.settings)
            self._metrics = QueueMetrics(
                self.settings,
                instances=lambda: health.read()["instances"],
                in_flight=lambda: self.queue.health()["jobs"]["inProgress"],
            )
        return self._metrics

    def authorize(self, scope: str) -> Key:
        """The key of this request, with `scope`; raises `unauthorized` or `forbidden`."""
        key = key_checks.check(self.keys, scope, self.metrics())
        self.metrics().request_seen(key.name, "allowed")
        return key

    def own(self, job: Job | None, key: Key) -> Job:
        """`job` when `key` submitted it; to any other key it does not exist."""
        if job is None or job.owner != key.name:
            raise errors.JobNotFound("request does not exist")
        return job

    def _job_ended(self, job: Job) -> None:
        seconds = (job.finished or time.time()) - (job.started or job.created)
        self.metrics().job_ended(job.status, job.error, seconds, job.owner)
        job.slot.give_back()
        if job.webhook:  # RunPod's webhook: its status object, as RunPod posts it
            self.webhooks.send(job.webhook, json_text.dumps(job.view()), job.id)
            self._let_go(job.id)  # told by its webhook, which a drain waits for


def create_app(settings: Settings, worker_token: str) -> Flask:
    local = LocalQueue(settings, worker_token)
    app = Flask("local-queue")
    answers.install(app, settings, log)
    app.extensions["local_queue"] = local
    app.register_blueprint(_public(local), url_prefix=f"/v2/{settings.local_endpoint_id}")
    app.register_blueprint(_control_plane(local), url_prefix="/worker")

    @app.get("/metrics")
    def metrics_page() -> Response:
        local.authorize("metrics")
        return Response(local.metrics().render(), mimetype="text/plain; version=0.0.4; charset=utf-8")

    return app


def _public(local: LocalQueue) -> Blueprint:
    """RunPod's public API, for keys with the `jobs` scope (README: Access)."""
    routes = Blueprint("public", __name__)
    queue = local.queue

    @routes.before_request
    def authorize() -> None:
        g.key = local.authorize("jobs")

    @routes.post("/run")
    @routes.post("/runsync")
    def run() -> Response:
        if drain.since(local.settings.run_layout) is not None:  # before the body is read
            raise errors.Draining("this worker is draining before a restart; send it to another")
        with local.quotas.take_job(g.key) as slot:  # a job that was accepted keeps it
            return _run(local, slot)

    @routes.route("/status/<job_id>", methods=["GET", "POST"])
    def status(job_id: str) -> Response:
        return json_response(local.told(local.own(queue.jobs.get(job_id), g.key)).view())

    @routes.route("/stream/<job_id>", methods=["GET", "POST"])
    def stream(job_id: str) -> Response:
        job = local.own(queue.jobs.get(job_id), g.key)
        with queue.changed:
            chunks, job.stream = job.stream, []
        local.told(job)
        return json_response({"id": job.id, "status": job.status, "stream": chunks})

    @routes.post("/cancel/<job_id>")
    def cancel(job_id: str) -> Response:
        local.own(queue.jobs.get(job_id), g.key)
        job = _known(queue.cancel(job_id))
        return json_response({"id": job.id, "status": job.status})

    @routes.get("/health")
    def health() -> Response:
        return json_response(queue.health())

    return routes


def _run(local: LocalQueue, slot: Slot) -> Response:
    """A job from the request's body; once accepted, it holds `slot` until it ends."""
    body = _body()
    payload = runpod_protocol.input_of(body)
    if not isinstance(payload, dict):
        raise errors.InvalidRequest('the body must be {"input": {...}}')
    webhook = webhooks.requested({"webhook": body.get("webhook")}, local.settings)
    sync = request.path.endswith("/runsync")
    job = local.accept(payload, sync=sync, webhook=webhook, key=g.key, slot=slot)
    if not sync:
        return json_response({"id": job.id, "status": job.status})
    low, default, high = RUNSYNC_WAIT_MS
    wait_ms = min(max(_int(request.args.get("wait"), default), low), high)
    local.queue.wait_final(job, wait_ms / 1000)
    return json_response(local.told(job).view())


def _control_plane(local: LocalQueue) -> Blueprint:
    """What the runpod SDK's worker loop polls, behind the token the entrypoint gave it."""
    routes = Blueprint("control", __name__)
    queue = local.queue

    @routes.before_request
    def authorize() -> None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), local.worker_token.encode()):
            raise errors.Unauthorized("the worker token")
        request.max_content_length = max(  # a job's result is capped by MAX_RESULT_MB, not MAX_REQUEST_MB
            answers.body_limit(local.settings), int((local.settings.max_result_mb + 1) * 2**20)
        )

    @routes.get("/job-take/<worker_id>")
    @routes.get("/job-take-batch/<worker_id>")
    def take(worker_id: str) -> Response:
        batch = "job-take-batch" in request.path
        jobs = queue.take(worker_id, _int(request.args.get("batch_size"), 1) if batch else 1, TAKE_HOLD_S)
        if not jobs:
            return Response(status=204)
        items = [{"id": job.id, "input": job.input} for job in jobs]
        return json_response(items if batch else items[0])

    @routes.post("/job-done/<pod_id>/<job_id>")
    @routes.post("/job-stream/<pod_id>/<job_id>")
    def done(pod_id: str, job_id: str) -> Response:
        result = _body()
        if isinstance(result, dict):
            (queue.done if "job-done" in request.path else queue.streamed)(job_id, result)
        return json_response({})

    @routes.get("/job-stop/<pod_id>")
    def stops(pod_id: str) -> Response:
        ids = queue.stops(STOP_HOLD_S)
        return json_response({"jobsToStop": ids}) if ids else Response(status=204)

    @routes.route("/ping/<pod_id>", methods=["GET", "POST"])
    def ping(pod_id: str) -> Response:
        return json_response({})

    return routes


def _known(job: Job | None) -> Job:
    if job is None:
        raise errors.JobNotFound("request does not exist")
    return job


def _body() -> Any:
    try:
        return json_text.loads(request.get_data(cache=False) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise errors.InvalidJson("the body is not valid JSON") from None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def main() -> int:
    settings = config.load_or_exit("localqueue")
    logs.setup("localqueue", settings.log_format)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    try:
        app = create_app(settings, settings.runpod_worker_key or "")
    except config.ConfigError as exc:  # API_KEYS_FILE went bad after the entrypoint checked it
        log.error("configuration error: %s", exc)
        return 2
    server = make_server("0.0.0.0", settings.api_port, app, threaded=True)
    log.info("RunPod-style queue on port %d under /v2/%s/", settings.api_port, settings.local_endpoint_id)
    if not settings.api_key and not settings.api_keys_file:
        log.warning(
            "API_KEY and API_KEYS_FILE are not set: anyone who reaches port %d can submit jobs",
            settings.api_port,
        )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A local stand-in for RunPod's queue, so serverless mode can be tried off RunPod.

It serves RunPod's public API under `/v2/<endpoint id>/` (run, runsync, status, stream, cancel,
health) and the worker control plane the runpod SDK polls (job-take, job-done, job-stream,
job-stop, ping). The real SDK worker loop then runs unchanged against it, exactly as on RunPod.
Started by supervisord only when the worker is not on RunPod.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from services.core import config, logs

if TYPE_CHECKING:
    from services.jobs.metrics import QueueMetrics

log = logging.getLogger("worker.local_queue")

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
TAKE_HOLD_S = 2.0  # how long a job-take long-poll is held open when the queue is empty
STOP_HOLD_S = 2.0
RUNSYNC_WAIT_MS = (1000, 90_000, 300_000)  # min, default, max of ?wait=
KEEP_S = {"sync": 60.0, "async": 1800.0}  # how long RunPod keeps finished results


@dataclass
class Job:
    id: str
    input: dict
    sync: bool
    created: float = field(default_factory=time.time)
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: Any = None
    progress: Any = None
    stream: list = field(default_factory=list)

    def view(self) -> dict:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished is not None and self.started is not None:
            body["executionTime"] = int((self.finished - self.started) * 1000)
        if self.worker_id:
            body["workerId"] = self.worker_id
        if self.status == "COMPLETED" and self.output is not None:
            body["output"] = self.output
        elif self.status == "FAILED":
            body["error"] = self.error
        elif self.status == "IN_PROGRESS" and self.progress is not None:
            body["output"] = self.progress
        return body


class Queue:
    """Job table and FIFO; one condition variable wakes every waiter on any change."""

    def __init__(self, on_end: Callable[[Job], None] | None = None) -> None:
        self.on_end = on_end  # told of each job that ends (the metrics)
        self.jobs: dict[str, Job] = {}
        self.pending: deque[str] = deque()
        self.to_stop: set[str] = set()
        self.changed = threading.Condition()
        self.counts = {"completed": 0, "failed": 0, "retried": 0}

    def submit(self, payload: dict, sync: bool) -> Job:
        job = Job(id=("sync-" if sync else "") + str(uuid.uuid4()), input=payload, sync=sync)
        with self.changed:
            self._prune()
            self.jobs[job.id] = job
            self.pending.append(job.id)
            self.changed.notify_all()
        return job

    def wait_final(self, job: Job, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: job.status in FINAL, timeout=timeout)

    def take(self, worker_id: str, count: int, hold: float) -> list[Job]:
        with self.changed:
            self.changed.wait_for(lambda: self.pending, timeout=hold)
            taken = []
            while self.pending and len(taken) < count:
                job = self.jobs[self.pending.popleft()]
                job.status, job.started, job.worker_id = "IN_PROGRESS", time.time(), worker_id
                taken.append(job)
            return taken

    def done(self, job_id: str, result: dict) -> None:
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status in FINAL:
                return
            if result.get("status") == "IN_PROGRESS":
                job.progress = result.get("output")
            elif "error" in result:
                job.status, job.error, job.finished = "FAILED", result["error"], time.time()
                self.counts["failed"] += 1
            else:
                job.status, job.output, job.finished = "COMPLETED", result.get("output"), time.time()
                self.counts["completed"] += 1
            if job.status in FINAL:
                log.info("job %s %s", job.id, job.status)
                self._ended(job)
            self.changed.notify_all()

    def streamed(self, job_id: str, result: dict) -> None:
        with self.changed:
            job = self.jobs.get(job_id)
            if job is not None and "output" in result:
                job.stream.append({"output": result["output"]})
                self.changed.notify_all()

    def cancel(self, job_id: str) -> Job | None:
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status in FINAL:
                return job
            if job.status == "IN_QUEUE":
                self.pending.remove(job_id)
            else:
                self.to_stop.add(job_id)
            job.status, job.finished = "CANCELLED", time.time()
            self._ended(job)
            self.changed.notify_all()
            return job

    def stops(self, hold: float) -> list[str]:
        with self.changed:
            self.changed.wait_for(lambda: self.to_stop, timeout=hold)
            ids, self.to_stop = sorted(self.to_stop), set()
            return ids

    def health(self) -> dict:
        with self.changed:
            states = [job.status for job in self.jobs.values()]
            running = states.count("IN_PROGRESS")
            return {
                "jobs": {
                    **self.counts,
                    "inProgress": running,
                    "inQueue": states.count("IN_QUEUE"),
                },
                "workers": {"idle": 0 if running else 1, "running": 1 if running else 0},
            }

    def _ended(self, job: Job) -> None:
        if self.on_end is not None:
            self.on_end(job)

    def _prune(self) -> None:
        now = time.time()
        for job_id in [
            job.id
            for job in self.jobs.values()
            if job.finished and now - job.finished > KEEP_S["sync" if job.sync else "async"]
        ]:
            del self.jobs[job_id]


class LocalQueueServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        endpoint_id: str,
        api_key: str | None,
        worker_token: str,
        settings: config.Settings | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.queue = Queue(on_end=self._job_ended)
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.worker_token = worker_token
        self.settings = settings or config.Settings()
        self._metrics: QueueMetrics | None = None

    def metrics(self) -> QueueMetrics:
        """Made on first use (a job ended, or a scrape): prometheus_client costs this process
        4 MiB, which an idle queue nobody scrapes need not pay."""
        if self._metrics is None:
            from services.jobs.metrics import QueueMetrics

            self._metrics = QueueMetrics(
                self.settings,
                instances=self._instances,
                in_flight=lambda: self.queue.health()["jobs"]["inProgress"],
            )
        return self._metrics

    def _instances(self) -> list[dict]:
        """Each ComfyUI instance and whether it answers (the handler, another process, runs the
        jobs: which instance is busy is its to know)."""
        from services.comfy import relay

        return [
            {
                "id": n,
                "ready": not self.settings.dry_run
                and relay.answers(self.settings.instance(n).comfy_url, 2.0),
            }
            for n in range(self.settings.instance_count)
        ]

    def _job_ended(self, job: Job) -> None:
        seconds = (job.finished or time.time()) - (job.started or job.created)
        self.metrics().job_ended(job.status, job.error, seconds)


class _Handler(BaseHTTPRequestHandler):
    server: LocalQueueServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if parts[:1] == ["worker"] and len(parts) >= 3:
                self._worker(method, parts[1], parts[2:], query)
            elif parts == ["metrics"] and method == "GET":
                self._metrics_page()
            elif parts[:2] == ["v2", self.server.endpoint_id] and len(parts) >= 3:
                self._public(method, parts[2], parts[3:], query)
            else:
                self._send(404, {"error": "not found"})
        except (BrokenPipeError, ConnectionResetError):
            return

    # RunPod's public API --------------------------------------------------------------------
    def _public(self, method: str, action: str, rest: list[str], query: dict) -> None:
        if not self._authorized_client():
            self._send(401, {"error": "Unauthorized"})
            return
        q = self.server.queue
        if action in ("run", "runsync") and method == "POST" and not rest:
            body = self._json_body()
            if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
                self._send(400, {"error": 'the body must be {"input": {...}}'})
                return
            job = q.submit(body["input"], sync=action == "runsync")
            if action == "run":
                self._send(200, {"id": job.id, "status": job.status})
                return
            low, default, high = RUNSYNC_WAIT_MS
            wait_ms = min(max(_int(query.get("wait"), default), low), high)
            q.wait_final(job, wait_ms / 1000)
            self._send(200, job.view())
        elif action in ("status", "stream", "cancel") and len(rest) == 1:
            job = q.cancel(rest[0]) if action == "cancel" else q.jobs.get(rest[0])
            if job is None:
                self._send(404, {"error": "request does not exist"})
            elif action == "stream":
                with q.changed:
                    chunks, job.stream = job.stream, []
                self._send(200, {"id": job.id, "status": job.status, "stream": chunks})
            else:
                self._send(200, job.view() if action == "status" else {"id": job.id, "status": job.status})
        elif action == "health" and method == "GET":
            self._send(200, q.health())
        else:
            self._send(404, {"error": "not found"})

    def _metrics_page(self) -> None:
        if not self._authorized_client():
            self._send(401, {"error": "Unauthorized"})
            return
        page = self.server.metrics().render()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def _authorized_client(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), key.encode())

    # the worker control plane the SDK polls ---------------------------------------------------
    def _worker(self, method: str, action: str, rest: list[str], query: dict) -> None:
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), self.server.worker_token.encode()):
            self._send(401, {"error": "Unauthorized"})
            return
        q = self.server.queue
        if action in ("job-take", "job-take-batch") and method == "GET":
            batch = action == "job-take-batch"
            jobs = q.take(rest[0], _int(query.get("batch_size"), 1) if batch else 1, TAKE_HOLD_S)
            if not jobs:
                self._send(204, None)
            else:
                items = [{"id": job.id, "input": job.input} for job in jobs]
                self._send(200, items if batch else items[0])
        elif action in ("job-done", "job-stream") and method == "POST" and len(rest) >= 2:
            result = self._json_body()
            if isinstance(result, dict):
                (q.done if action == "job-done" else q.streamed)(rest[1], result)
            self._send(200, {})
        elif action == "job-stop" and method == "GET":
            ids = q.stops(STOP_HOLD_S)
            if ids:
                self._send(200, {"jobsToStop": ids})
            else:
                self._send(204, None)
        elif action == "ping":
            self._send(200, {})
        else:
            self._send(404, {"error": "not found"})

    def _json_body(self) -> Any:
        length = _int(self.headers.get("Content-Length"), 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    def _send(self, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def main() -> int:
    logs.setup("local_queue")
    settings = config.load()
    server = LocalQueueServer(
        ("0.0.0.0", settings.api_port),
        settings.local_endpoint_id,
        settings.api_key,
        settings.runpod_worker_key or "",
        settings,
    )
    log.info("RunPod-style queue on port %d under /v2/%s/", settings.api_port, settings.local_endpoint_id)
    if not settings.api_key:
        log.warning("API_KEY is not set: anyone who reaches port %d can submit jobs", settings.api_port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The serverless worker: the runpod SDK's own worker loop calling the job pipeline.

The handler is async so that a RunPod cancel reaches it (as CancelledError) while the
blocking pipeline runs in a thread; failures are returned as `{"error": ...}`, never raised,
because the SDK would put a traceback into the job record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from services.comfy.pool import DEPTH, ComfyPool
from services.core import background, config, drain, errors, logs
from services.core.config import Settings
from services.core.job_spec import Cancel
from services.jobs import outcome
from services.jobs.pipeline import Pipeline, Reply
from services.jobs.webhooks import Webhooks, event
from services.jobs.worker import build_worker
from services.web import runpod_protocol

log = logging.getLogger("worker.handler")
PROGRESS_INTERVAL_S = 0.5


class Throttled:
    """Passes progress on at most once per `interval` (RunPod posts each update over HTTP). The
    last update of a burst follows once its interval has passed, so a status read during a long
    node shows that node, not the one before it; `close` drops what is still held."""

    def __init__(self, send: Callable[[dict], None], interval: float = PROGRESS_INTERVAL_S) -> None:
        self._send = send
        self._interval = interval
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._held: dict | None = None
        self._timer: threading.Timer | None = None

    def __call__(self, message: dict) -> None:
        with self._lock:
            wait = self._last + self._interval - time.monotonic()
            if wait > 0 or self._timer is not None:
                self._held = message
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = time.monotonic()
        self._send(message)

    def _flush(self) -> None:
        with self._lock:
            message, self._held, self._timer = self._held, None, None
            self._last = time.monotonic()
        if message is not None:
            self._send(message)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._held, self._timer = None, None


def make_handler(
    pipeline: Pipeline,
    send_progress: Callable[[dict, dict], None] | None = None,
    recycle_on_restart: bool = True,
    webhooks: Webhooks | None = None,
) -> Callable[[dict], Awaitable[dict]]:
    """`recycle_on_restart`: ask RunPod for a fresh worker after ComfyUI died under a job; not
    with several instances, where the others' jobs go on and the dead one restarts alone. A
    worker whose every instance is out for good (`gpu_unusable`) always asks for one.
    `webhooks`: what tells a job's `webhook` of its end (RunPod's status object as `data`)."""

    def run(job: dict, cancel: Cancel, progress: Throttled | None) -> Reply:
        """In a thread, with its webhook: a job RunPod cancelled runs on here to its end (its
        awaiting task is gone) and is told as `job.cancelled` all the same."""
        body, trace = runpod_protocol.trace_of(job.get("input"))
        try:
            reply = pipeline.run(
                body, progress, cancel, route="serverless", name=str(job.get("id")), trace=trace
            )
        finally:
            if progress is not None:
                progress.close()
        if reply.webhook and webhooks is not None:
            try:
                state = outcome.of_reply(reply.status, reply.error_code, cancel.is_set())
                data = {"id": job.get("id"), **outcome.as_runpod(reply.body)}
                sent = event(state, data, pipeline.settings)
                webhooks.send(reply.webhook, sent, str(job.get("id")), trace=reply.trace)
            except Exception as exc:  # a bug: the job's answer still goes out
                background.log_unexpected(log, "the job's webhook", exc)
        return reply

    async def handler(job: dict) -> dict:
        cancel = Cancel()
        progress = Throttled(lambda message: send_progress(job, message)) if send_progress else None
        try:
            reply = await asyncio.to_thread(run, job, cancel, progress)  # off the SDK's event loop
        except asyncio.CancelledError:
            cancel.set()
            raise
        body = dict(reply.body)
        body.update(runpod_protocol.traced(reply.trace_id))  # which trace to open (README: Operating it)
        if reply.error_code == errors.GpuUnusable.code or (
            recycle_on_restart and reply.error_code == errors.ComfyRestarted.code
        ):
            body["refresh_worker"] = True  # RunPod stops this worker after the job and starts another
        return body

    return handler


def main() -> int:
    settings = config.load_or_exit("handler")
    logs.setup("handler", settings.log_format)
    import runpod  # only the serverless process pays for importing the SDK

    if settings.log_format == "json":
        _sdk_lines_logged()

    worker = build_worker(settings, cap_results=True)
    wait_for_warmups(worker.pool, settings)
    single = len(worker.pool.instances) == 1
    sdk = {
        "handler": make_handler(
            worker.pipeline,
            runpod.serverless.progress_update,
            recycle_on_restart=single,
            webhooks=worker.webhooks,
        ),
        "concurrency_modifier": lambda _current: concurrency(worker.pool, settings),
    }
    runpod.serverless.start(sdk)
    return 0


def _sdk_lines_logged() -> None:
    """The runpod SDK prints its own lines (RunPodLogger.log, at RUNPOD_LOG_LEVEL): under
    LOG_FORMAT=json they go through logging instead, with the job they name."""
    from runpod.serverless.modules import rp_logger

    sdk, levels = logging.getLogger("runpod"), rp_logger.LOG_LEVELS

    def log(
        self: rp_logger.RunPodLogger, message: object, message_level: str = "INFO", job_id: object = None
    ) -> None:
        if self.level == "NOTSET" or (
            message_level in levels and levels.index(self.level) > levels.index(message_level)
        ):
            return
        level = {
            "TRACE": logging.DEBUG,
            "DEBUG": logging.DEBUG,
            "WARN": logging.WARNING,
            "ERROR": logging.ERROR,
        }
        sdk.log(
            level.get(message_level, logging.INFO),
            "%s",
            message,
            extra={"job_id": job_id} if job_id else None,
        )

    rp_logger.RunPodLogger.log = log


def wait_for_warmups(pool: ComfyPool, settings: Settings) -> None:
    """Take no job before the first warm-ups ended (within a boot and a job's time)."""
    limit = time.monotonic() + settings.comfy_boot_timeout_s + settings.job_timeout_s
    for instance in pool.instances:
        if instance.warmup is not None:
            with contextlib.suppress(errors.ComfyInitFailed):
                instance.warmup.wait(limit)


def concurrency(pool: ComfyPool, settings: Settings) -> int:
    """DEPTH jobs at once per instance in the pool (the running one and the next, queued in
    its ComfyUI, services.comfy.pool). All instances, not only the idle ones: the SDK
    changes its concurrency only once no job is in flight, so the number must stay put while
    instances come and go between jobs; it moves when one is taken out for good. None while
    draining on RunPod (what the queue holds goes to other workers); off RunPod the local queue
    refuses new jobs and those it accepted still run here."""
    if settings.on_runpod and drain.since(settings.run_layout) is not None:
        return 0
    return max(1, DEPTH * pool.usable())


if __name__ == "__main__":
    sys.exit(main())

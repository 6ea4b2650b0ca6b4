"""The serverless worker: the runpod SDK's own worker loop calling the job pipeline.

The handler is async so that a RunPod cancel reaches it (as CancelledError) while the
blocking pipeline runs in a thread; failures are returned as `{"error": ...}`, never raised,
because the SDK would put a traceback into the job record.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from services import config, errors, logs
from services.comfy.executor import ComfyExecutor
from services.comfy.warmup import start_warmup
from services.output_store import OutputStore
from services.pipeline import Pipeline

PROGRESS_INTERVAL_S = 0.5


def throttled(send: Callable[[dict], None], interval: float = PROGRESS_INTERVAL_S) -> Callable[[dict], None]:
    """Pass progress on at most once per `interval` (RunPod posts each update over HTTP)."""
    last = [-float("inf")]

    def update(message: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= interval:
            last[0] = now
            send(message)

    return update


def make_handler(
    pipeline: Pipeline, send_progress: Callable[[dict, dict], None] | None = None
) -> Callable[[dict], Awaitable[dict]]:
    async def handler(job: dict) -> dict:
        cancel = threading.Event()
        progress = throttled(lambda message: send_progress(job, message)) if send_progress else None
        try:
            reply = await asyncio.to_thread(pipeline.run, job.get("input"), progress, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        body = dict(reply.body)
        if reply.error_code == errors.ComfyRestarted.code:
            body["refresh_worker"] = True
        return body

    return handler


def main() -> int:
    logs.setup("handler")
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"[handler] configuration error: {exc}", file=sys.stderr)
        return 2
    import runpod  # only the serverless process pays for importing the SDK

    executor = ComfyExecutor(settings)
    warmup = start_warmup(settings, executor)
    pipeline = Pipeline(
        settings,
        executor,
        result_limit_bytes=int(settings.max_result_mb * 1024 * 1024),
        output_store=OutputStore.from_settings(settings),
    )
    if warmup is not None:  # take no job before the first warm-up ended
        with contextlib.suppress(errors.ComfyInitFailed):
            warmup.wait(time.monotonic() + settings.comfy_boot_timeout_s + settings.job_timeout_s)
    runpod.serverless.start({"handler": make_handler(pipeline, runpod.serverless.progress_update)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

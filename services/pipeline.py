"""The one job pipeline behind both the pod API and the RunPod handler.

envelope -> payload checks -> (DRY_RUN stops here) -> ComfyUI -> result -> seal.
Adapters only authorize, decode the body and map the `Reply` to their transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from services import envelope, errors, job_request
from services.config import Settings

log = logging.getLogger("worker.pipeline")

Progress = Callable[[dict], None]


class Executor(Protocol):
    """Runs a checked job in ComfyUI and returns the result object of DESIGN.md section 5."""

    def execute(self, job: job_request.JobRequest, progress: Progress | None, cancel: Any) -> dict: ...


@dataclass(frozen=True)
class Reply:
    body: dict
    status: int
    error_code: str | None = None


class Pipeline:
    def __init__(self, settings: Settings, executor: Executor | None) -> None:
        self.settings = settings
        self.executor = executor

    def run(self, body: Any, progress: Progress | None = None, cancel: Any = None) -> Reply:
        """Answer one request body; never raises for anything a client sent."""
        try:
            opened = self._open(body)
        except errors.WorkerError as exc:
            return self._failed(exc)
        try:
            result, status, code = (
                self._execute(opened.payload if opened else body, progress, cancel),
                200,
                None,
            )
        except errors.WorkerError as exc:
            result, status, code = exc.to_dict(), exc.http_status, exc.code
            log.info("job failed: %s", exc.code)
        if opened is not None:
            result = envelope.seal(result, self.settings.private_key, opened.reply_to)
        return Reply(result, status, code)

    def _open(self, body: Any) -> envelope.Opened | None:
        if envelope.is_envelope(body):
            return envelope.open_request(body, self.settings.private_key)
        if self.settings.encryption_required:
            raise errors.EncryptionRequired("this worker accepts only encrypted requests (envelope v1)")
        return None

    def _execute(self, payload: Any, progress: Progress | None, cancel: Any) -> dict:
        job = job_request.parse(
            payload,
            default_timeout_s=self.settings.job_timeout_s,
            no_history_default=self.settings.no_history,
        )
        if self.settings.dry_run:
            return {"status": "ok", "dry_run": True, "nodes": len(job.workflow), "images": len(job.images)}
        if self.executor is None:
            raise errors.ComfyInitFailed("no ComfyUI executor is configured")
        return self.executor.execute(job, progress, cancel)

    @staticmethod
    def _failed(exc: errors.WorkerError) -> Reply:
        log.info("request refused: %s", exc.code)
        return Reply(exc.to_dict(), exc.http_status, exc.code)

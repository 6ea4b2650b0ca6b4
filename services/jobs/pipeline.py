"""The one job pipeline behind both the pod API and the RunPod handler.

envelope (and its replay check) -> a template call filled in (services.jobs.template_params) ->
payload checks -> the job's models on the volume -> (DRY_RUN stops here) -> ComfyUI (a template's
refused input told by its parameter) -> result (+ the template's `params`) -> seal. Adapters only authorize, decode the body and
map the `Reply` to their transport.
Progress of an encrypted job leaves only as a percentage: node ids would reveal the workflow.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from services.core import background, errors
from services.core.codec import unb64
from services.core.config import Settings
from services.core.in_hand import CUT, InHand
from services.core.job_spec import Cancel, JobRequest, Progress
from services.core.offload import offload
from services.jobs import (
    envelope,
    envelope_v2,
    image_fetch,
    job_request,
    template_params,
    webhooks,
    worker_comfyui,
)
from services.jobs.output_store import OutputStore
from services.jobs.replay import ReplayGuard
from services.jobs.templates import Templates
from services.models.job_models import JobModels

if TYPE_CHECKING:  # redis is imported only by workers that set STATE_URL
    from services.jobs.state_store import StateStore

log = logging.getLogger("worker.pipeline")


class JobObserver(Protocol):
    """What the pod API's metrics learn of each job (services.jobs.metrics)."""

    def job_started(self) -> None: ...

    def job_ended(self, reply: Reply, seconds: float) -> None: ...

    def envelope_opened(self, kid: str) -> None:
        """By which worker key (a rotation's old key's traffic shows falling to zero)."""


class Executor(Protocol):
    """Runs a checked job in ComfyUI and returns the result object (README: Pod API)."""

    def execute(self, job: JobRequest, progress: Progress | None, cancel: Cancel | None) -> dict: ...


def coarse(progress: Progress) -> Progress:
    """Progress without node ids or class names: a percentage of the current step."""

    def update(message: dict) -> None:
        value, most = message.get("value"), message.get("max")
        if isinstance(value, int | float) and isinstance(most, int | float) and most > 0:
            progress({"percent": max(0, min(100, round(100 * value / most)))})

    return update


@dataclass(frozen=True)
class Reply:
    body: dict | bytes  # bytes: an envelope v2 answer (services.jobs.envelope_v2)
    status: int
    error_code: str | None = None
    retry_after_s: int | None = None  # the same request may succeed later (WorkerError.retry_after_s)
    webhook: str | None = field(default=None, repr=False)  # the URL the job asked to be told at


_BUG = errors.WorkerError("unexpected worker error")
_UNEXPECTED = Reply(_BUG.to_dict(), _BUG.http_status, _BUG.code)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        models: JobModels,
        *,
        result_limit_bytes: int | None = None,
        output_store: OutputStore | None = None,
        observer: JobObserver | None = None,
        shared: StateStore | None = None,
        in_hand: InHand | None = None,
        templates: Templates | None = None,
    ) -> None:
        """`executor`: what runs a checked job in ComfyUI (the pool); `models`: what makes sure
        of a job's models on the volume; `shared`: the fleet's Redis (STATE_URL), which remembers
        envelopes for every worker; `in_hand`: where each running job is held for a drain
        (services.core.in_hand); `templates`: the named workflows a call may fill in
        (services.jobs.templates); `result_limit_bytes`: the cap of an answer (serverless),
        beyond which outputs go to `output_store` (or the job fails with output_too_large)."""
        self.settings = settings
        self.observer = observer
        self.executor = executor
        self.result_limit_bytes = result_limit_bytes
        self.output_store = output_store
        self.keyring = envelope.Keyring.of(settings)
        self.replay = ReplayGuard(settings.replay_window_s, shared)
        self.models = models
        self.in_hand = in_hand
        self.templates = templates

    def run(
        self,
        body: Any,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        job_id: str | None = None,
    ) -> Reply:
        """Answer one request body; never raises, so every caller's job ends and lets go of
        what it holds (its drain piece, the in-flight gauge, an async record). `job_id`: a
        fleet's async job, which may run again elsewhere after a drain cut it, its envelope
        then no replay."""
        cancel = cancel or Cancel()
        started = time.monotonic()
        reply = _UNEXPECTED
        if self.observer is not None:
            self.observer.job_started()
        try:
            with self.in_hand.hold("job", lambda: cancel.stop(CUT)) if self.in_hand else nullcontext():
                reply = self._run(body, progress, cancel, job_id)
        except Exception as exc:  # a bug at the edge (a piece that cannot be written, say)
            background.log_unexpected(log, "the pipeline", exc)
        finally:
            if self.observer is not None:
                self.observer.job_ended(reply, time.monotonic() - started)
        return reply

    def _run(self, body: Any, progress: Progress | None, cancel: Cancel, job_id: str | None) -> Reply:
        """Errors before the box opens, and replays, answer in plaintext; every other error of
        an encrypted job (a bad `webhook` or `ts` in it too) is its own and sealed like a result."""
        try:
            opened = self._open(body)
        except errors.WorkerError as exc:
            return self._failed(exc)
        webhook = None
        try:
            if opened is not None:
                self.replay.check(opened.epk, opened.nonce, opened.payload, job=job_id)
            payload = opened.payload if opened else body
            webhook = webhooks.requested(payload, self.settings)
            result, status, code, retry = self._result(payload, progress, cancel, opened), 200, None, None
        except errors.ReplayedRequest as exc:
            return self._failed(exc)
        except errors.WorkerError as exc:
            result, status, code, retry = exc.to_dict(), exc.http_status, exc.code, exc.retry_after_s
            log.info("job failed: %s", exc.code)
        except Exception as exc:  # a bug: answer with a code, never a traceback or job content
            background.log_unexpected(log, "the pipeline", exc)
            result, status, code, retry = _UNEXPECTED.body, _UNEXPECTED.status, _UNEXPECTED.error_code, None
        if opened is not None:
            size = sum(len(o.get("data", "")) for o in result.get("outputs") or [])
            seal = envelope_v2.seal if opened.version == 2 else envelope.seal
            result = offload(seal, result, opened.box, size=size)
        return Reply(result, status, code, retry, webhook)

    def _result(
        self, payload: Any, progress: Progress | None, cancel: Cancel, opened: envelope.Opened | None
    ) -> dict:
        """The job's result; raises its error."""
        if opened is not None and progress is not None:
            progress = coarse(progress)
        call = None
        if template_params.is_call(payload):
            call = self._template_call(payload)
            payload = call.payload
        job = job_request.parse(
            payload,
            default_timeout_s=self.settings.job_timeout_s,
            no_history_default=self.settings.no_history,
            output_format=self.settings.response_format,
            fetch=self._fetch,
        )
        job = call.job(job) if call else job
        markers = self.models.ensure(job.models, progress, cancel) if job.models else []
        try:
            result = self._fit(self._execute(job, progress, cancel, call), opened)
        finally:
            self.models.release(markers)
        if job.output_format == "worker-comfyui":
            result = worker_comfyui.answer(result)
        if call is not None:
            result = {**result, "params": call.used}
        return result

    def _open(self, body: Any) -> envelope.Opened | None:
        if isinstance(body, envelope_v2.Sealed):
            opened = offload(envelope_v2.open_request, body, self.keyring, size=len(body.ciphertext))
        elif envelope.is_envelope(body):
            size = len(body["ciphertext"]) if isinstance(body.get("ciphertext"), str) else 0
            opened = offload(envelope.open_request, body, self.keyring, size=size)
        else:
            opened = None
        if opened is not None:
            if self.observer is not None:
                self.observer.envelope_opened(opened.kid)
            return opened
        if self.settings.encryption_required:
            raise errors.EncryptionRequired("this worker accepts only encrypted requests (an envelope)")
        return None

    def _fetch(self, url: str) -> bytes:
        return image_fetch.fetch(url, self.settings)

    def _template_call(self, payload: dict) -> template_params.Call:
        if self.templates is None:
            raise errors.UnknownTemplate("this worker serves no templates")
        return template_params.prepare(
            self.templates, payload, self._fetch, self.settings.comfy_ready_timeout_s
        )

    def _execute(
        self,
        job: JobRequest,
        progress: Progress | None,
        cancel: Cancel | None,
        call: template_params.Call | None,
    ) -> dict:
        if self.settings.dry_run:
            return {"status": "ok", "dry_run": True, "nodes": len(job.workflow), "images": len(job.images)}
        try:
            return self.executor.execute(job, progress, cancel)
        except errors.WorkflowValidationFailed as exc:
            if call is None:
                raise
            raise call.explain(exc) from None

    def _fit(self, result: dict, opened: envelope.Opened | None) -> dict:
        """Keep the answer under the result cap: move outputs to the bucket, or refuse with sizes."""
        limit = self.result_limit_bytes
        if limit is None or not result.get("outputs"):
            return result
        size = len(json.dumps(result, separators=(",", ":")))
        if opened is not None:
            size = size * 4 // 3 + 128  # the sealed answer is base64 of the box
        if size <= limit:
            return result
        if self.output_store is None:
            sizes = ", ".join(f"node {o['node_id']} {o['size'] / 1e6:.2f} MB" for o in result["outputs"])
            raise errors.OutputTooLarge(
                f"the result is {size / 1e6:.2f} MB, the cap is {limit / 1e6:.2f} MB (MAX_RESULT_MB) "
                f"[{sizes}]; configure BUCKET_* to receive the outputs as URLs"
            )
        return {
            **result,
            "outputs": [self._upload(result["prompt_id"], o, opened) for o in result["outputs"]],
        }

    def _upload(self, prompt_id: str, output: dict, opened: envelope.Opened | None) -> dict:
        """Upload one output; for an encrypted job the bucket only ever holds a sealed blob."""
        data = offload(unb64, output["data"], size=len(output["data"]))
        if opened is not None:
            data = offload(envelope.seal_bytes, data, opened.box, size=len(data))
        key = f"{prompt_id}/{uuid.uuid4().hex}"
        url = self.output_store.put(key, data, "application/octet-stream" if opened else output["mime"])
        moved = {k: v for k, v in output.items() if k != "data"}
        return {**moved, "url": url, "sealed": opened is not None}

    @staticmethod
    def _failed(exc: errors.WorkerError) -> Reply:
        log.info("request refused: %s", exc.code)
        return Reply(exc.to_dict(), exc.http_status, exc.code, exc.retry_after_s)

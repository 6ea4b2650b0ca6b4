"""The one job pipeline behind both the pod API and the RunPod handler.

envelope (and its replay check) -> the job: a plain one checked (job_request) or a template call
filled in (templates), its images read (input_images) -> the job's models on the volume ->
(DRY_RUN stops here) -> ComfyUI (a template's refused input told by its parameter) -> result (+
the template's `params`) -> seal. Adapters only authorize, decode the body and map the `Reply`
to their transport.
Progress of an encrypted job leaves only as a percentage: node ids would reveal the workflow.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from services.core import background, errors, json_text, tracing
from services.core.codec import unb64
from services.core.config import Settings
from services.core.in_hand import CUT, InHand
from services.core.job_spec import TIMING, Cancel, JobRequest, Progress, Timing
from services.core.offload import offload
from services.jobs import (
    envelopes,
    input_images,
    job_request,
    outcome,
    webhooks,
    worker_comfyui,
)
from services.jobs.output_store import OutputStore
from services.jobs.quotas import JobModelLimits
from services.jobs.templates import Call, Templates, is_call, prepare
from services.models.job_models import JobModels

if TYPE_CHECKING:  # redis is imported only by workers that set STATE_URL
    from services.jobs.fleet.state_store import StateStore

log = logging.getLogger("worker.pipeline")
POD = socket.gethostname()


class JobObserver(Protocol):
    """What the pod API's metrics learn of each job (services.jobs.metrics)."""

    def job_started(self) -> None: ...

    def job_ended(self, reply: Reply, seconds: float, key: str) -> None: ...

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
    body: dict | bytes  # bytes: an envelope v2 answer (services.jobs.envelopes.v2)
    status: int
    error_code: str | None = None
    retry_after_s: int | None = None  # the same request may succeed later (WorkerError.retry_after_s)
    webhook: str | None = field(default=None, repr=False)  # the URL the job asked to be told at
    job_id: str = ""  # the id its end line names (a sync /run answers it as X-Job-Id)
    trace: dict = field(default_factory=dict)  # its span's context: what comes after continues it

    @property
    def trace_id(self) -> str:
        """Its trace's id (services.core.tracing), "" when nothing is traced."""
        return tracing.trace_id_of(self.trace)


@dataclass
class _Facts:
    """What a job's end line says beside its outcome and times; never anything of its content
    (an encrypted call's template is not named)."""

    encrypted: bool = False
    kid: str | None = None  # the worker key that opened it (a rotation's traffic, job by job)
    template: str | None = None
    models: int = 0


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
        model_limits: JobModelLimits | None = None,
    ) -> None:
        """`executor`: what runs a checked job in ComfyUI (the pool); `models`: what makes sure
        of a job's models on the volume; `shared`: the fleet's Redis (STATE_URL), which remembers
        envelopes for every worker; `in_hand`: where each running job is held for a drain
        (services.core.in_hand); `templates`: the named workflows a call may fill in
        (services.jobs.templates); `result_limit_bytes`: the cap of an answer (serverless),
        beyond which outputs go to `output_store` (or the job fails with output_too_large);
        `model_limits`: the scope and bytes a job's models need of its key (the pod API's keys)."""
        self.settings = settings
        self.observer = observer
        self.executor = executor
        self.result_limit_bytes = result_limit_bytes
        self.output_store = output_store
        self.keyring = envelopes.Keyring.of(settings)
        self.replay = envelopes.ReplayGuard(settings.replay_window_s, shared)
        self.models = models
        self.in_hand = in_hand
        self.templates = templates
        self._defaults = {  # what a job that leaves an option out gets
            "default_timeout_s": settings.job_timeout_s,
            "no_history_default": settings.no_history,
            "output_format": settings.response_format,
        }
        self.model_limits = model_limits

    def run(
        self,
        body: Any,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        job_id: str | None = None,
        route: str = "run",
        name: str | None = None,
        trace: Mapping[str, str] | None = None,
        on_start: Callable[[], None] | None = None,
        key: str = "-",
    ) -> Reply:
        """Answer one request body; never raises, so every caller's job ends and lets go of
        what it holds (its drain piece, the in-flight gauge, an async record), and says its end
        in one line. `job_id`: a fleet's async job, which may run again elsewhere after a drain
        cut it, its envelope then no replay; `route`: how the job came; `name`: the id its end
        line gives it (the job's own, by default `job_id`, else a fresh one); `trace`: the
        `traceparent` it came with, which its trace continues; `on_start`: called when its prompt
        leaves ComfyUI's queue (JobRequest.on_start); `key`: the name of the key that sent it."""
        cancel = cancel or Cancel()
        started = time.monotonic()
        reply, facts, timing = _UNEXPECTED, _Facts(), Timing()
        name = name or job_id or f"run-{uuid.uuid4()}"
        context = TIMING.set(timing)
        if self.observer is not None:
            self.observer.job_started()
        with tracing.job(trace, **{"job.id": name, "job.route": route}):
            try:
                stop = functools.partial(cancel.stop, CUT)  # the drain's deadline stops the job
                with self.in_hand.hold("job", stop) if self.in_hand else nullcontext():
                    reply = self._run(body, progress, cancel, job_id, facts, on_start, key)
            except Exception as exc:  # a bug at the edge (a piece that cannot be written, say)
                background.log_unexpected(log, "the pipeline", exc)
            finally:
                TIMING.reset(context)
                seconds = time.monotonic() - started
                if self.observer is not None:
                    self.observer.job_ended(reply, seconds, key)
                _say_end(name, route, key, body, reply, cancel, facts, timing, seconds)
            return replace(reply, job_id=name, trace=tracing.carrier_of_current())

    def _run(
        self,
        body: Any,
        progress: Progress | None,
        cancel: Cancel,
        job_id: str | None,
        facts: _Facts,
        on_start: Callable[[], None] | None,
        key: str,
    ) -> Reply:
        """Errors before the box opens, and replays, answer in plaintext; every other error of
        an encrypted job (a bad `webhook` or `ts` in it too) is its own and sealed like a result."""
        try:
            with tracing.stage("envelope.open"):
                opened = self._open(body)
        except errors.WorkerError as exc:
            return self._failed(exc)
        webhook = None
        facts.encrypted, facts.kid = opened is not None, opened.kid if opened else None
        try:
            if opened is not None:
                self.replay.check(opened.epk, opened.nonce, opened.payload, job=job_id)
            payload = opened.payload if opened else body
            webhook = webhooks.requested(payload, self.settings)
            result = self._result(payload, progress, cancel, opened, facts, job_id, on_start, key)
            status, code, retry = 200, None, None
        except errors.ReplayedRequest as exc:
            return self._failed(exc)
        except errors.WorkerError as exc:
            result, status, code, retry = exc.to_dict(), exc.http_status, exc.code, exc.retry_after_s
        except Exception as exc:  # a bug: answer with a code, never a traceback or job content
            background.log_unexpected(log, "the pipeline", exc)
            result, status, code, retry = _UNEXPECTED.body, _UNEXPECTED.status, _UNEXPECTED.error_code, None
        if opened is not None:
            with tracing.stage("seal"):
                result = envelopes.seal_answer(result, opened)
        return Reply(result, status, code, retry, webhook)

    def _result(
        self,
        payload: Any,
        progress: Progress | None,
        cancel: Cancel,
        opened: envelopes.Opened | None,
        facts: _Facts,
        job_id: str | None,
        on_start: Callable[[], None] | None,
        key: str,
    ) -> dict:
        """The job's result; raises its error."""
        if opened is not None and progress is not None:
            progress = coarse(progress)
        call = None
        if is_call(payload):
            with tracing.stage("template"):
                call = self._template_call(payload)
            job = call.job
            facts.template = None if opened else call.template.name
        else:
            job = job_request.parse(payload, fetch=self._fetch, **self._defaults)
        job = replace(job, elsewhere=job_id is not None, on_start=on_start, owner=key)
        facts.models = len(job.models)
        markers = []
        if job.models:
            counted = self.model_limits.counter(key) if self.model_limits is not None else None
            with tracing.stage("models", **{"job.models": len(job.models)}):
                markers = self.models.ensure(
                    job.models, progress, cancel, counted, private=opened is not None
                )
        try:
            result = self._fit(self._execute(job, progress, cancel, call), opened)
        finally:
            self.models.release(markers)
        if job.output_format == "worker-comfyui":
            result = worker_comfyui.answer(result)
        if call is not None:
            result = {**result, "params": call.used}
        return result

    def _open(self, body: Any) -> envelopes.Opened | None:
        opened = envelopes.open_body(body, self.keyring)
        if opened is not None:
            if self.observer is not None:
                self.observer.envelope_opened(opened.kid)
            return opened
        if self.settings.encryption_required:
            raise errors.EncryptionRequired("this worker accepts only encrypted requests (an envelope)")
        return None

    def _fetch(self, url: str) -> bytes:
        with tracing.stage("image.fetch"):
            return input_images.fetch(url, self.settings)

    def _template_call(self, payload: dict) -> Call:
        if self.templates is None:
            raise errors.UnknownTemplate("this worker serves no templates")
        options = functools.partial(job_request.options, **self._defaults)
        return prepare(self.templates, payload, options, self._fetch, self.settings.comfy_ready_timeout_s)

    def _execute(
        self,
        job: JobRequest,
        progress: Progress | None,
        cancel: Cancel | None,
        call: Call | None,
    ) -> dict:
        if self.settings.dry_run:
            return {"status": "ok", "dry_run": True, "nodes": len(job.workflow), "images": len(job.images)}
        try:
            return self.executor.execute(job, progress, cancel)
        except errors.WorkflowValidationFailed as exc:
            if call is None:
                raise
            raise call.explain(exc) from None

    def _fit(self, result: dict, opened: envelopes.Opened | None) -> dict:
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
        with tracing.stage("result.store", **{"job.outputs": len(result["outputs"])}):
            return {
                **result,
                "outputs": [self._upload(result["prompt_id"], o, opened) for o in result["outputs"]],
            }

    def _upload(self, prompt_id: str, output: dict, opened: envelopes.Opened | None) -> dict:
        """Upload one output; for an encrypted job the bucket only ever holds a sealed blob."""
        data = offload(unb64, output["data"], size=len(output["data"]))
        if opened is not None:
            data = offload(envelopes.seal_bytes, data, opened.box, size=len(data))
        key = f"{prompt_id}/{uuid.uuid4().hex}"
        url = self.output_store.put(key, data, "application/octet-stream" if opened else output["mime"])
        moved = {k: v for k, v in output.items() if k != "data"}
        return {**moved, "url": url, "sealed": opened is not None}

    @staticmethod
    def _failed(exc: errors.WorkerError) -> Reply:
        return Reply(exc.to_dict(), exc.http_status, exc.code, exc.retry_after_s)


def _say_end(
    name: str,
    route: str,
    key: str,
    body: Any,
    reply: Reply,
    cancel: Cancel,
    facts: _Facts,
    timing: Timing,
    seconds: float,
) -> None:
    """The job's one end line: where it came from, how it ended and where its time went, in
    words of the worker's own (README: Operating it)."""
    fields = {
        "event": "job.end",
        "job_id": name,
        "route": route,
        "key": key,
        "outcome": outcome.of_reply(reply.status, reply.error_code, cancel.is_set()),
        "code": reply.error_code or "",
        "encrypted": facts.encrypted,
        "kid": facts.kid or "",
        "template": facts.template or "",
        "instance": timing.instance,
        "pod": POD,
        "queue_wait_s": round(timing.waited_s, 3),
        "comfy_s": round(timing.ran_s, 3),
        "total_s": round(seconds, 3),
        "bytes_in": _size(body),
        "bytes_out": _size(reply.body),
        "models": facts.models,
    }
    tracing.annotate(**{f"job.{k}": v for k, v in fields.items() if k not in ("event", "job_id")})
    if reply.error_code:
        tracing.failed(reply.error_code)
    said = " ".join(
        f"{k}={'-' if v in ('', None) else v}" for k, v in fields.items() if k not in ("event", "job_id")
    )
    trace_id = tracing.trace_id()  # on the record already, as every line of the job has it
    log.info("job %s ended: %s%s", name, said, f" trace_id={trace_id}" if trace_id else "", extra=fields)


def _size(body: Any) -> int:
    """Bytes of a request or an answer, roughly (a sealed box's, or its JSON's longest strings)."""
    if isinstance(body, bytes):
        return len(body)
    if isinstance(body, envelopes.Sealed):
        return len(body.ciphertext)
    return json_text.size_hint(body) if isinstance(body, dict | list) else 0

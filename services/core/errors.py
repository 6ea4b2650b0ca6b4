"""Every error a client can see: one small hierarchy, one stable `code` each.

Adapters turn them into an HTTP status (pod API) or a RunPod `{"error": ...}` (serverless);
the wire form is always `"<code>: <detail>"`. Details never carry workflow content.
"""

from __future__ import annotations


class WorkerError(Exception):
    code = "internal_error"
    http_status = 500
    retry_after_s: int | None = None  # sent as Retry-After: the same request may succeed later

    def __init__(self, detail: str = "", cause: str | None = None) -> None:
        """`cause`: what the worker's own log may say of it (the pre-flight's torch message),
        never part of the answer."""
        super().__init__(detail)
        self.detail = detail
        self.cause = cause

    @property
    def message(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code

    def to_dict(self) -> dict:
        return {"error": self.message}


class Unauthorized(WorkerError):
    code = "unauthorized"
    http_status = 401


class Forbidden(WorkerError):
    """A known key without the route's scope (the detail names the scope, never the key)."""

    code = "forbidden"
    http_status = 403


class QuotaExceeded(WorkerError):
    """A key's limit is reached (README: Access); answered before the request body is read."""

    code = "quota_exceeded"
    http_status = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class NotFound(WorkerError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(WorkerError):
    code = "method_not_allowed"
    http_status = 405


class BodyTooLarge(WorkerError):
    code = "body_too_large"
    http_status = 413


class InvalidJson(WorkerError):
    code = "invalid_json"
    http_status = 400


class EncryptionRequired(WorkerError):
    code = "encryption_required"
    http_status = 400


class MissingEncryptedFields(WorkerError):
    code = "missing encrypted fields"
    http_status = 400


class InvalidCiphertext(WorkerError):
    code = "invalid ciphertext"
    http_status = 400


class UnknownKey(WorkerError):
    """The envelope names a key (`kid`) this worker does not hold: the detail names its current
    key's id, so a client refetches the key list and seals again."""

    code = "unknown_key"
    http_status = 400


class ReplayedRequest(WorkerError):
    """The same envelope again, or one whose `ts` is outside the replay window."""

    code = "replayed_request"
    http_status = 409


class EncryptionUnavailable(WorkerError):
    code = "encryption_unavailable"
    http_status = 400


class NotAvailable(WorkerError):
    """The route exists but this worker does not do it as configured (DRY_RUN, its mode)."""

    code = "not_available"
    http_status = 409


class ImageFetchFailed(WorkerError):
    """An input image given by URL could not be fetched (never names the URL)."""

    code = "image_fetch_failed"
    http_status = 400


class InvalidRequest(WorkerError):
    """The payload around the workflow is malformed (images, timeout, flags)."""

    code = "invalid_request"
    http_status = 400


class InvalidWorkflow(WorkerError):
    code = "invalid_workflow"
    http_status = 400


class WorkflowValidationFailed(WorkerError):
    """ComfyUI refused the prompt (its 400 with `node_errors`, kept for the templates, which
    tell a refused input by the parameter that filled it)."""

    code = "workflow_validation_failed"
    http_status = 400

    def __init__(self, detail: str = "", node_errors: dict | None = None) -> None:
        super().__init__(detail)
        self.node_errors = node_errors if isinstance(node_errors, dict) else {}


class UnknownTemplate(WorkerError):
    code = "unknown_template"
    http_status = 404


class InvalidParams(WorkerError):
    """A template call's parameters break its schema, or ComfyUI refused a value one filled:
    every problem, each as {param, rule, message}."""

    code = "invalid_params"
    http_status = 400

    def __init__(self, template: str, details: list[dict]) -> None:
        """The detail lists every problem too: RunPod keeps a failed job's `error` string alone."""
        said = "; ".join(f"{d['param'] or 'params'}: {d['message']} [{d['rule']}]" for d in details)
        super().__init__(f"template {template!r}: {said}")
        self.template, self.details = template, details

    def to_dict(self) -> dict:
        return {"error": self.message, "template": self.template, "details": self.details}


class TemplateError(WorkerError):
    """ComfyUI refused a template's workflow for a reason no parameter explains: the template
    (or a model it names) is at fault, not the call."""

    code = "template_error"
    http_status = 500

    def __init__(self, template: str, detail: str, node_errors: dict) -> None:
        super().__init__(f"template {template!r}: {detail}")
        self.template, self.node_errors = template, node_errors

    def to_dict(self) -> dict:
        return {"error": self.message, "template": self.template, "node_errors": self.node_errors}


class ExecutionFailed(WorkerError):
    """A node raised while ComfyUI ran the workflow."""

    code = "execution_failed"
    http_status = 422


class Interrupted(WorkerError):
    code = "interrupted"
    http_status = 409


class JobTimeout(WorkerError):
    code = "timeout"
    http_status = 504


class ComfyInitFailed(WorkerError):
    code = "comfy_init_failed"
    http_status = 503


class ComfyBusy(WorkerError):
    """ComfyUI answers but took no prompt in time (a slow disk listing model folders, say): the
    worker is healthy, so this is no reason to recycle it."""

    code = "comfy_busy"
    http_status = 503


class ComfyRestarted(WorkerError):
    """ComfyUI died or was restarted while the job was in it."""

    code = "comfy_restarted"
    http_status = 503


class NotStartedHere(WorkerError):
    """A fleet's job had not started when the pod's last ready ComfyUI went down: it goes back
    to the fleet's queue for another pod (the answer only when Redis could not take it back)."""

    code = "not_started"
    http_status = 503
    retry_after_s = 5


class GpuFault(WorkerError):
    """The GPU failed under the job (a CUDA fault): its ComfyUI restarts; the same job may run
    again on a healthy instance."""

    code = "gpu_fault"
    http_status = 503
    retry_after_s = 5


class GpuUnusable(WorkerError):
    """Every ComfyUI instance of this worker is out for good (its GPU kept failing): the job
    never started; send it to another worker."""

    code = "gpu_unusable"
    http_status = 503
    retry_after_s = 30


class Busy(WorkerError):
    """MAX_QUEUE_DEPTH jobs already wait for an instance here: try again, or another worker."""

    code = "busy"
    http_status = 503
    retry_after_s = 5


class GpuOutOfMemory(WorkerError):
    """The GPU ran out of memory for this job: a smaller one (size, batch) may fit."""

    code = "gpu_out_of_memory"
    http_status = 503


class ComfyProtocolError(WorkerError):
    code = "comfy_error"
    http_status = 502


class JobNotFound(WorkerError):
    code = "job_not_found"
    http_status = 404


class OutputTooLarge(WorkerError):
    code = "output_too_large"
    http_status = 507


class InvalidTarget(WorkerError):
    """A model type or file name that is unknown or would leave the model root."""

    code = "invalid_target"
    http_status = 400


class UrlNotAllowed(WorkerError):
    code = "url_not_allowed"
    http_status = 400


class DownloadFailed(WorkerError):
    code = "download_failed"
    http_status = 502


class ChecksumMismatch(WorkerError):
    code = "checksum_mismatch"
    http_status = 422


class InsufficientSpace(WorkerError):
    code = "insufficient_space"
    http_status = 507


class DownloadNotFound(WorkerError):
    code = "download_not_found"
    http_status = 404


class StateUnavailable(WorkerError):
    """The Redis the fleet shares (STATE_URL) does not answer; async jobs wait for it."""

    code = "state_unavailable"
    http_status = 503


class WorkerLost(WorkerError):
    """The pod that ran the job went silent (killed, cut off) after the job reached ComfyUI."""

    code = "worker_lost"
    http_status = 503


class Draining(WorkerError):
    """The worker drains before a restart: new work goes to another worker, refused before its
    envelope is opened so the same envelope is no replay there."""

    code = "draining"
    http_status = 503
    retry_after_s = 5


class InvalidWebhook(WorkerError):
    """A job's `webhook` is no http(s) URL, or its address is not allowed; never repeats it."""

    code = "invalid_webhook"
    http_status = 400


class ShuttingDown(WorkerError):
    """The drain's deadline (DRAIN_TIMEOUT_S) passed while the job ran: it was stopped in
    ComfyUI and may be sent again, to another worker."""

    code = "shutting_down"
    http_status = 503
    retry_after_s = 5


class ModelFetchFailed(WorkerError):
    """A model a job named could not be made sure of: `models[i]: <why>`, never its URL or host."""

    code = "model_fetch_failed"
    http_status = 502


class ModelCacheFull(WorkerError):
    """MODEL_CACHE_GB leaves no room for the file, even after evicting what no job uses."""

    code = "model_cache_full"
    http_status = 507


def codes_by_status() -> dict[int, list[str]]:
    """Every code a client may see, by the HTTP status it comes with (the OpenAPI document's
    error answers are made from this, so they cannot drift from the classes above)."""
    found: dict[int, list[str]] = {}
    pending: list[type[WorkerError]] = [WorkerError]
    while pending:
        kind = pending.pop()
        codes = found.setdefault(kind.http_status, [])
        if kind.code not in codes:
            codes.append(kind.code)
        pending.extend(kind.__subclasses__())
    return {status: sorted(codes) for status, codes in sorted(found.items())}


SHAPES = {  # declared once: the OpenAPI document (services.api.openapi) shows them
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "<code>: <detail>"},
            "template": {"type": "string", "description": "invalid_params, template_error: the template"},
            "details": {
                "type": "array",
                "description": "invalid_params: every problem",
                "items": {
                    "type": "object",
                    "required": ["param", "rule", "message"],
                    "properties": {
                        "param": {"type": ["string", "null"]},
                        "rule": {
                            "type": "string",
                            "description": "the JSON Schema keyword, image or comfyui",
                        },
                        "message": {"type": "string"},
                    },
                },
            },
            "node_errors": {"type": "object", "description": "template_error: ComfyUI's node errors"},
        },
    },
}

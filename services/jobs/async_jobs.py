"""Asynchronous `/run` for pod mode: start a job, then poll its state, progress and result.

Proxies in front of pods cut HTTP requests at about 100 s, so long jobs run in the background
(a greenlet under gunicorn's gevent worker) and are kept in memory for JOB_KEEP_S after they end.
Without STATE_URL, state lives in the one API worker process and a restart of the API forgets
it; with it, services.jobs.fleet keeps jobs in Redis for the fleet.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.core import background, errors, tracing
from services.core.in_hand import Piece
from services.core.job_spec import Cancel
from services.jobs import envelopes, outcome, webhooks
from services.jobs.pipeline import Pipeline
from services.jobs.quotas import Slot
from services.jobs.webhooks import Delivery, Webhooks

log = logging.getLogger("worker.jobs")


@dataclass
class AsyncJob:
    id: str
    state: str = "queued"  # queued -> running -> completed | failed | cancelled
    created: float = field(default_factory=time.time)
    finished: float | None = None
    progress: dict | None = None
    result: dict | None = None
    http_status: int | None = None
    cancel: Cancel = field(default_factory=Cancel)
    held: Piece | None = field(default=None, repr=False)  # a drain waits until its result was fetched once
    webhook: Delivery | None = None
    trace: dict = field(default_factory=dict)  # its submission's span: its run continues the trace
    owner: str = "-"  # the name of the key that submitted it: only that key sees it
    slot: Slot = field(default_factory=Slot, repr=False)  # its key's job slot: its id, given back at its end

    def started(self) -> None:
        """Its prompt left ComfyUI's queue (JobRequest.on_start): what "running" means for every store."""
        if self.state == "queued":
            self.state = "running"

    @property
    def trace_id(self) -> str:
        return tracing.trace_id_of(self.trace)

    def view(self) -> dict:
        body: dict[str, Any] = {"id": self.id, "state": self.state, "progress": self.progress}
        if self.trace:
            body["trace_id"] = self.trace_id
        if self.result is not None:
            body["result"] = self.result
            body["http_status"] = self.http_status
        if self.webhook is not None:
            body["webhook"] = self.webhook.view()
        return body


def check_webhook(body: Any, pipeline: Pipeline) -> None:
    """A plain job's `webhook` is refused at submission (400 invalid_webhook); a sealed one's
    when the job opens, before it runs."""
    if not envelopes.is_envelope(body):
        webhooks.requested(body, pipeline.settings)


def known(job: AsyncJob | None) -> AsyncJob:
    """The job a route asked for, or `job_not_found`."""
    if job is None:
        raise errors.JobNotFound("no such job (ended jobs are kept for JOB_KEEP_S, an hour by default)")
    return job


class JobStore(Protocol):
    """What the routes ask of async jobs; kept in this process (AsyncJobs) or, for a fleet, in
    Redis (services.jobs.fleet.SharedJobs). A job is its owner's (the name of the key that
    submitted it): to another key it does not exist."""

    def start(
        self, body: Any, trace: Mapping[str, str] | None = None, owner: str = "-", slot: Slot | None = None
    ) -> AsyncJob:
        """Accept a request body as a job; it runs in the background, continuing `trace` (the
        `traceparent` it came with). `slot`: the key's job slot (services.jobs.quotas), which
        becomes its id; the store keeps it once the job is accepted and gives it back at its end."""

    def get(self, job_id: str, owner: str | None = None) -> AsyncJob | None: ...

    def cancel(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        """Ask the job to stop; its state says when it did."""

    def close(self) -> None:
        """The process is stopping: take no more work, hand back what did not start."""


class AsyncJobs(JobStore):
    """A job here is this process's from its start to its end: its owner, its slot, its drain
    piece and its trace are held by its `AsyncJob`, and its end gives the slot back in one place."""

    def __init__(self, pipeline: Pipeline, webhooks: Webhooks | None = None) -> None:
        self.pipeline = pipeline
        self.webhooks = webhooks
        self.keep_s = pipeline.settings.job_keep_s
        self.jobs: dict[str, AsyncJob] = {}

    def start(
        self, body: Any, trace: Mapping[str, str] | None = None, owner: str = "-", slot: Slot | None = None
    ) -> AsyncJob:
        check_webhook(body, self.pipeline)
        self._prune()
        job = AsyncJob(id=(slot and slot.id) or str(uuid.uuid4()), owner=owner)
        if slot is not None:
            job.slot = slot.keep()
        job.trace = tracing.submitted(trace, **{"job.id": job.id})
        if self.pipeline.in_hand is not None:  # its result dies with this process: a drain waits for it
            job.held = self.pipeline.in_hand.hold("async")
        self.jobs[job.id] = job
        background.start("async-job", self._run, job, body)
        return job

    def get(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        job = self.jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        if job.finished is not None and job.held is not None:
            job.held.release()  # its result is fetched once: a drain need not wait for it
        return job

    def cancel(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        job = self.get(job_id, owner)
        if job is not None and job.finished is None:
            job.cancel.set()
            log.info("job %s: cancel asked", job_id, extra={"event": "job.cancel", "job_id": job_id})
        return job

    def close(self) -> None:
        """Nothing to hand back: these jobs live and end with the process."""

    def _run(self, job: AsyncJob, body: Any) -> None:
        def progress(update: dict) -> None:
            job.progress = update

        try:
            reply = self.pipeline.run(
                body,
                progress,
                job.cancel,
                route="async",
                name=job.id,
                trace=job.trace,
                on_start=job.started,
                key=job.owner,
            )
            job.result, job.http_status = reply.body, reply.status
            job.state = outcome.of_reply(reply.status, reply.error_code, job.cancel.is_set())
        finally:
            job.finished = time.time()
            job.slot.give_back()
        if reply.webhook and self.webhooks is not None:
            sent = webhooks.event(job.state, job.view(), self.pipeline.settings)
            job.webhook = self.webhooks.send(reply.webhook, sent, job.id, trace=reply.trace)

    def _prune(self) -> None:
        now = time.time()
        for job_id in [j.id for j in self.jobs.values() if j.finished and now - j.finished > self.keep_s]:
            job = self.jobs.pop(job_id)
            if job.held is not None:
                job.held.release()


SHAPES = {  # declared once: the OpenAPI document (services.api.openapi) shows them
    "AsyncJob": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": list(outcome.STATES)},
            "progress": {"type": ["object", "null"]},
            "result": {"type": "object"},
            "http_status": {"type": "integer"},
            "status_url": {"type": "string"},
            "webhook": {
                "type": "object",
                "description": "the delivery of the job's webhook (never its URL)",
                "properties": {
                    "state": {
                        "type": "string",
                        "enum": [webhooks.PENDING, webhooks.DELIVERED, webhooks.FAILED],
                    },
                    "attempts": {"type": "integer"},
                    "last_status": {"type": ["integer", "null"]},
                },
            },
        },
    },
}

"""A fleet job's run on the pod that took it: it starts when its prompt leaves ComfyUI's queue,
in one atomic step (the record turns `running` under the pod's name, its ticket and request go),
so a job starts once, on one pod, and a plain workflow leaves Redis when its job starts. Its
outcome is written whatever Redis does meanwhile; a job a drain's deadline cut, or one that had
not started when the pod's last ComfyUI went down, goes back to the queue as it was sent, under
its id, and runs on another pod, where its envelope opens again for that job only."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time

from services.core import errors, json_text, tracing
from services.core.in_hand import waits_for_its_job
from services.core.offload import offload
from services.jobs import outcome, webhooks
from services.jobs.async_jobs import AsyncJob
from services.jobs.fleet.deliveries import Deliveries
from services.jobs.fleet.liveness import GROUP, hand_back
from services.jobs.fleet.records import Records, dumps, job_of
from services.jobs.fleet.state_store import Error
from services.jobs.fleet.taken import Part, Pod, Taken
from services.jobs.pipeline import Pipeline

log = logging.getLogger("worker.jobs")
RETRY_S = 0.5  # after Redis did not answer
_ELSEWHERE = {  # a job that answers one of these goes back to the queue, and why
    errors.ShuttingDown.code: "cut by the drain's deadline",
    errors.NotStartedHere.code: "not started when this pod's last ComfyUI went down",
}


class Running(Part):
    def __init__(self, pod: Pod, pipeline: Pipeline, records: Records, deliveries: Deliveries) -> None:
        super().__init__(pod)
        self.pipeline = pipeline
        self.records = records
        self.deliveries = deliveries
        self.start_script = pod.store.script("start")
        self._finish = pod.store.script("finish")
        self._requeue = pod.store.script("requeue")

    def run(self, taken: Taken, body_text: bytes, trace: dict[str, str]) -> None:
        """Run a job taken here to its end (in its own greenlet)."""
        try:
            # held until its outcome is in Redis (the pipeline's own hold ends with its answer)
            with self._in_hand("fleet-job"), tracing.job(trace, **{"job.id": taken.job_id}):
                self._execute(taken, body_text, trace)
        finally:
            self.taken.remove(taken)

    def _in_hand(self, kind: str) -> contextlib.AbstractContextManager:
        in_hand = self.pipeline.in_hand
        return in_hand.hold(kind, cut=waits_for_its_job) if in_hand else contextlib.nullcontext()

    def _started(self, taken: Taken) -> None:
        """Its prompt left ComfyUI's queue: the job starts here, once (JobRequest.on_start).
        Cancelled or started on another pod meanwhile, it stops; handed back, it stops and
        answers nothing."""
        with taken.lock:
            if not taken.dropped:
                known = self._write_start(taken)
                if known is None:  # another pod would take its ticket over and run it again
                    taken.unsure = True
                    log.warning(
                        "job %s: the shared state did not record its start in time; it stops here "
                        "and goes back to the fleet's queue",
                        taken.job_id,
                        extra={"event": "job.start_unknown", "job_id": taken.job_id},
                    )
                    taken.cancel.stop(
                        errors.NotStartedHere("the shared state did not record the job's start")
                    )
                    return
                taken.started = known
                if known:
                    return
        taken.cancel.stop(errors.Interrupted("the job was cancelled, or it runs on another pod"))

    def _write_start(self, taken: Taken) -> bool | None:
        """Whether the job's start was written (False: cancelled, or started elsewhere), trying
        again while Redis does not answer; None when it did not answer before another pod may
        take the job's ticket over (JOB_CLAIM_TIMEOUT_S after it was last kept, with a margin)."""
        give_up = taken.kept + self.settings.job_claim_timeout_s * 2 / 3
        while True:
            try:
                written = self.start_script(
                    keys=[
                        self.names.job(taken.job_id),
                        self.names.running,
                        self.names.stream,
                        self.names.tickets,
                        self.names.body(taken.job_id),
                    ],
                    args=[GROUP, taken.entry_id, self.name, time.time(), taken.job_id],
                )
            except Error as exc:
                self.store.reached(False, exc)
                if time.monotonic() + RETRY_S >= give_up:
                    return None
                time.sleep(RETRY_S)
                continue
            self.store.reached(True)
            return bool(written)

    def _execute(self, taken: Taken, body_text: bytes, trace: dict[str, str]) -> None:
        job_id, cancel = taken.job_id, taken.cancel
        try:
            body = offload(json_text.loads, body_text, size=len(body_text))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, errors.InvalidJson):
            body = None  # the pipeline answers invalid_request
        reply = self.pipeline.run(
            body,
            lambda update: self._progress(job_id, update),
            cancel,
            job_id,
            route="fleet",
            on_start=functools.partial(self._started, taken),
            key=taken.key,
        )
        if taken.dropped:
            return  # handed back: another pod answers
        if reply.error_code in _ELSEWHERE and self._back_to_queue(taken, body_text, reply.error_code):
            return
        state = outcome.of_reply(reply.status, reply.error_code, cancel.is_set())
        with tracing.stage("result.store"):
            result = offload(json_text.dumps, reply.body, size=json_text.size_hint(reply.body))
            finished = self._write_outcome(taken, state, result, reply.status)
        if finished:
            self.records.ended(job_id)
            job = AsyncJob(id=job_id, state=state, result=reply.body, http_status=reply.status, trace=trace)
            view = job.view()
        else:  # answered elsewhere meanwhile: the webhook tells what the record says
            view = self._ended_view(job_id)
        if reply.webhook and view is not None:
            sent = webhooks.event(view["state"], view, self.settings)
            self.deliveries.send(job_id, reply.webhook, sent, trace=tracing.carrier_of_current())

    def _ended_view(self, job_id: str) -> dict | None:
        try:
            record = self.records.read(job_id)
        except errors.StateUnavailable:
            return None
        return job_of(job_id, record).view() if record.get("state") in outcome.ENDED else None

    def _back_to_queue(self, taken: Taken, body_text: bytes, code: str) -> bool:
        """A job that did not run here to its end (the drain's deadline cut it, or it had not
        started when this pod's last ComfyUI went down) goes back to the queue as it was sent,
        under its id, for another pod (its envelope opens again there for this job only): a
        started one first in its key's line with a new ticket, one not started by handing its
        ticket back. False when Redis does not answer or the job is no longer this pod's."""
        job_id = taken.job_id
        again = False
        if taken.started or taken.unsure:  # an unsure start may have been written
            try:
                again = self._requeue(
                    keys=[self.names.job(job_id), self.names.running, self.names.stream],
                    args=[self.name, job_id, body_text, self.names.root],
                )
            except Error as exc:
                self.store.reached(False, exc)
                return False
        if not again and not taken.started:
            again = hand_back(self.store, self.settings, [taken.entry_id])
        if again:
            log.info(
                "job %s went back to the fleet's queue (%s)",
                job_id,
                "its start here could not be recorded" if taken.unsure else _ELSEWHERE[code],
                extra={"event": "job.requeued", "job_id": job_id},
            )
        return bool(again)

    def _progress(self, job_id: str, update: dict) -> None:
        try:
            self.records.set_kept(job_id, "progress", dumps(update))
        except Error as exc:
            self.store.reached(False, exc)

    def _write_outcome(self, taken: Taken, state: str, result: str, status: int) -> bool:
        """Write the outcome (and let go of the entry of a job that ended before it started),
        waiting out a Redis that does not answer (for up to JOB_OUTCOME_RETRY_S): a job that ran is never
        lost to an outage, nor to a Redis that restarted empty (its record is written again,
        with its key: only that key sees it). False: the job was answered elsewhere meanwhile
        (cancelled, declared worker_lost, run by another pod), and that stays its outcome, or it
        had not started and its record is gone."""
        job_id = taken.job_id
        deadline = time.monotonic() + self.settings.job_outcome_retry_s
        while True:
            try:
                written = self._finish(
                    keys=[
                        self.names.job(job_id),
                        self.names.running,
                        self.names.stream,
                        self.names.tickets,
                        self.names.body(job_id),
                    ],
                    args=[
                        self.name,
                        state,
                        result,
                        status,
                        time.time(),
                        self.records.ttl(),
                        job_id,
                        GROUP,
                        taken.entry_id,
                        self.names.root,
                        taken.key if taken.started else "",  # a record Redis lost: whose it was
                    ],
                )
            except Error as exc:
                self.store.reached(False, exc)
                if time.monotonic() > deadline:
                    log.error(
                        "dropped the outcome of job %s: the shared state did not answer for JOB_OUTCOME_RETRY_S",
                        job_id,
                        extra={"event": "job.outcome_dropped", "job_id": job_id},
                    )
                    return True
                time.sleep(RETRY_S)
                continue
            self.store.reached(True)
            if written == -1:
                log.warning(
                    "job %s ended before it started, and its record is gone from the shared state "
                    "(Redis lost it): its outcome is dropped",
                    job_id,
                    extra={"event": "job.outcome_dropped", "job_id": job_id},
                )
            elif not written:
                log.warning(
                    "job %s ended here after it was answered elsewhere; its outcome here is dropped",
                    job_id,
                    extra={"event": "job.outcome_dropped", "job_id": job_id},
                )
            return written == 1

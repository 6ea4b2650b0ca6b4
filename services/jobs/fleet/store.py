"""The fleet's job store as the routes see it (`JobStore`): submit, poll, cancel, the queue's
length, and stopping; the pod's taking, running, liveness and webhooks are its parts."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from services.core import background, errors, json_text, tracing
from services.core.config import Settings
from services.core.offload import offload
from services.jobs import access
from services.jobs.async_jobs import AsyncJob, JobStore, check_webhook
from services.jobs.fleet.deliveries import Deliveries
from services.jobs.fleet.liveness import GROUP, WATCH_S, Liveness, name_prefix
from services.jobs.fleet.records import Records, dumps, job_of
from services.jobs.fleet.running import Running
from services.jobs.fleet.state_store import Error, StateStore
from services.jobs.fleet.taken import Pod, TakenJobs
from services.jobs.fleet.taking import RETRY_S, Taking
from services.jobs.pipeline import Pipeline
from services.jobs.quotas import Quotas, Slot
from services.jobs.webhooks import Webhooks

log = logging.getLogger("worker.jobs")
FIRST_TURN = 1e10  # a key's turn before it was first served: its first job's time less this


class SharedJobs(JobStore):
    """`capacity` and `at_once`: what this pod's ComfyUIs would take (services.jobs.fleet.taking)."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        store: StateStore,
        capacity: Callable[[int], int],
        quotas: Quotas,
        webhooks: Webhooks | None = None,
        at_once: Callable[[int], int] | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.names = store.names
        self.name = name_prefix(os.getpid()) + uuid.uuid4().hex[:6]
        quotas.held_by(self.name)  # its slots live while this pod does
        self.taken = TakenJobs()
        pod = Pod(settings, store, self.name, self.taken)
        self.records = Records(settings, store, quotas)
        self.deliveries = Deliveries(pod, self.records, pipeline.keyring, webhooks)
        self.running = Running(pod, pipeline, self.records, self.deliveries)
        self.taking = Taking(pod, self.running.run, capacity, at_once)
        self.liveness = Liveness(pod, self.records, self.deliveries)
        self._cancel = store.script("cancel")
        self.taking.ensure_group()
        with contextlib.suppress(Error):  # before it can take a job: a pod with no proof of
            self.liveness.beat()  # life yet has its jobs answered worker_lost by any other pod
        background.loop("shared-jobs-take", self.taking.round, RETRY_S, until=lambda: self.taken.closing)
        background.loop("shared-jobs-watch", self.liveness.round, WATCH_S)

    @property
    def taken_over(self) -> int:
        return self.taking.taken_over

    @property
    def lost(self) -> int:
        return self.liveness.lost

    def start(
        self, body: Any, trace: Mapping[str, str] | None = None, owner: str = "-", slot: Slot | None = None
    ) -> AsyncJob:
        """The job's record holds its slot (`slot: 1`): whichever pod ends the job gives it back
        (Records.ended), and a take drops it once the record ended or is gone."""
        check_webhook(body, self.pipeline)
        slotted = slot is not None and slot.id is not None
        job = AsyncJob(id=(slot and slot.id) or str(uuid.uuid4()), owner=owner)
        job.trace = tracing.submitted(trace, **{"job.id": job.id})  # the pod that runs it goes on
        text = offload(json_text.dumps, body, size=json_text.size_hint(body))
        record = {
            "state": "queued",
            "created": job.created,
            "traceparent": job.trace.get("traceparent", ""),
            "key": owner,
            "slot": int(slotted),
        }
        try:
            with self.store.redis.pipeline(transaction=True) as tx:
                tx.hset(self.names.job(job.id), mapping=record)
                tx.set(self.names.body(job.id), text)
                tx.rpush(self.names.waiting(owner), job.id)
                tx.sadd(self.names.waiting_keys, owner)
                # a key never served yet goes before the keys served, in the order of their first jobs
                tx.hsetnx(self.names.served, owner, job.created - FIRST_TURN)
                tx.xadd(self.names.stream, {"ticket": "1"})
                tx.execute()
        except Error as exc:
            raise self.store.unavailable(exc) from None
        self.store.reached(True)
        if slot is not None:
            slot.keep()  # the record's now
        return job

    def get(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        record = self.records.read(job_id)
        # a record without a key (a pod before named keys wrote it) is no named key's: only an
        # open worker's ("-", where every job is anyone's)
        if not record or (owner is not None and record.get("key", access.OPEN.name) != owner):
            return None
        if record.get("state") == "running" and self.liveness.declare_lost(job_id, record.get("owner", "")):
            record = self.records.read(job_id)
        return job_of(job_id, record) if record else None

    def cancel(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        if self.get(job_id, owner) is None:
            return None
        interrupted = errors.Interrupted("the job was cancelled")
        try:
            state = self._cancel(
                keys=[self.names.job(job_id)],
                args=[
                    dumps(interrupted.to_dict()),
                    interrupted.http_status,
                    time.time(),
                    self.records.ttl(),
                    self.names.root,
                    job_id,
                ],
            )
        except Error as exc:
            raise self.store.unavailable(exc) from None
        if state == b"queued":  # it ended now, before any pod started it
            self.records.ended(job_id)
        return self.get(job_id, owner)

    def queue(self) -> tuple[int | None, int] | None:
        """The consumer group's (lag, pending) as XINFO GROUPS reports them: entries no pod took
        yet (None where Redis cannot tell), and entries taken but not started. None when Redis
        does not answer. The lag is what an autoscaler reads (KEDA's redis-streams scaler)."""
        try:
            groups = self.store.redis.xinfo_groups(self.names.stream)
        except Error:
            return None
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        return (group["lag"], group["pending"]) if group else (0, 0)

    def waiting(self) -> int | None:
        """Jobs in the stream no pod has started (None when Redis does not answer)."""
        queue = self.queue()
        return None if queue is None else (queue[0] or 0) + queue[1]

    def close(self) -> None:
        """Stop taking jobs and hand back those taken but not started, for another pod at once
        (their idle time is set past the claim timeout). Jobs running here run on."""
        self.taken.close()
        held = self.taking.let_go(
            errors.ShuttingDown("this pod's API process stops; the job went back to the fleet's queue")
        )
        log.info("stopped taking jobs from the fleet's queue; %d taken but not started go back", held)
        self.deliveries.hand_back()

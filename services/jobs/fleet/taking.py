"""How a pod takes jobs from the fleet's stream: only while it has room on a ready ComfyUI
instance, as many as it would start now. A ticket it reads is bound, in one atomic step
(scripts/bind.lua), to the first job in the line of the key with the fewest jobs taken across
the fleet, then of the key served least recently, then of the oldest: one key's burst does not
starve another key's job. A draining pod takes nothing and hands back what it was handed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.core import background, drain, errors, tracing
from services.jobs.fleet.liveness import GROUP, hand_back
from services.jobs.fleet.records import text
from services.jobs.fleet.state_store import Error
from services.jobs.fleet.taken import Part, Pod, Taken

log = logging.getLogger("worker.jobs")
BLOCK_MS = 1000  # a taking pod waits this long for an entry, then looks at its capacity again
BEHIND_S = 0.1  # how often a pod whose ComfyUIs are all busy looks for a job to queue behind
BEHIND_AFTER_MS = 500  # ... and how long a job waits before such a pod reads it (an idle pod first)
RETRY_S = 0.5  # after Redis did not answer

Run = Callable[[Taken, bytes, dict], None]  # runs a job taken here to its end


class Taking(Part):
    """`capacity(own)`: how many more jobs this pod's ComfyUIs would take now, given `own` jobs
    it took (ComfyPool.spare); `at_once(own)`: how many of those would start at once, not queued
    behind a running one (None: all)."""

    def __init__(
        self, pod: Pod, run: Run, capacity: Callable[[int], int], at_once: Callable[[int], int] | None
    ) -> None:
        super().__init__(pod)
        self.run = run
        self.capacity = capacity
        self.at_once = at_once
        self.taken_over = 0  # tickets of silent pods this pod took over
        self._bind = pod.store.script("bind")
        self._waited = pod.store.script("waited")

    def ensure_group(self) -> None:
        try:
            self.store.redis.xgroup_create(self.names.stream, GROUP, id="0", mkstream=True)
        except Error as exc:
            if "BUSYGROUP" not in str(exc):
                self.store.reached(False, exc)

    def round(self) -> None:
        """Take as many entries as this pod would start now, and start them."""
        own = len(self.taken)
        draining = drain.since(self.settings.run_layout) is not None  # it takes nothing new
        if draining and own:  # ... and what waits here behind a running job runs elsewhere
            let_go = self.let_go(
                errors.ShuttingDown("this pod drains; the job went back to the fleet's queue")
            )
            if let_go:
                log.info("draining: %d job(s) taken but not started went back to the fleet's queue", let_go)
        free = 0 if draining else self.capacity(own)
        if free <= 0:
            self.taken.wait_change(RETRY_S)
            return
        behind = self.at_once is not None and self.at_once(own) <= 0
        if behind:
            # only room behind a running job: a pod with an idle ComfyUI, blocked on the stream,
            # is served first (and one between two reads of its, once the job waited a while);
            # this one looks now and then
            self.taken.wait_change(BEHIND_S)
        try:
            entries = self._read(free, behind)
        except Error as exc:
            self.store.reached(False, exc)
            if "NOGROUP" in str(exc):
                self.ensure_group()
            time.sleep(RETRY_S)
            return
        self.store.reached(True)
        if entries and drain.since(self.settings.run_layout) is not None:  # began while it waited
            hand_back(self.store, self.settings, [entry_id for entry_id, _ in entries])
            return
        for entry_id, fields in entries:
            self._begin(entry_id, fields)

    def let_go(self, stop: errors.WorkerError) -> int:
        """Hand back the jobs taken here that have not started (their prompts wait in ComfyUI's
        queue), for another pod at once, and take them out of ComfyUI. How many."""
        held = self.taken.let_go()
        hand_back(self.store, self.settings, [taken.entry_id for taken in held])
        for taken in held:  # out of ComfyUI's queue
            taken.cancel.stop(stop)
        return len(held)

    def _read(self, count: int, behind: bool) -> list[tuple[str, dict]]:
        """Entries a silent pod took and never started first, then new ones: waiting up to
        BLOCK_MS for one, or, `behind` a running job, one that waited BEHIND_AFTER_MS."""
        redis = self.store.redis
        claim_ms = int(self.settings.job_claim_timeout_s * 1000)
        _cursor, claimed, *_deleted = redis.xautoclaim(
            self.names.stream, GROUP, self.name, claim_ms, "0-0", count=count
        )
        if claimed:
            self.taken_over += len(claimed)
            log.info("took over %d job(s) another pod took and never started", len(claimed))
            return [(text(i), f) for i, f in claimed]
        if behind and self._waited(keys=[self.names.stream], args=[GROUP]) < BEHIND_AFTER_MS:
            return []
        block = None if behind else BLOCK_MS
        answer = redis.xreadgroup(GROUP, self.name, {self.names.stream: ">"}, count=count, block=block)
        return [(text(i), f) for _stream, entries in answer or [] for i, f in entries]

    def _begin(self, entry_id: str, fields: dict) -> None:
        try:
            bound = self._bound(entry_id, fields)
        except Error as exc:
            self.store.reached(False, exc)
            return  # still pending: taken over after the claim timeout
        if bound is None:
            return
        taken, body_text, trace = bound
        if not self.taken.add(taken):  # the pod closes
            hand_back(self.store, self.settings, [entry_id])
            return
        background.start("shared-job", self.run, taken, body_text, trace)

    def _bound(self, entry_id: str, fields: dict) -> tuple[Taken, bytes, dict[str, str]] | None:
        """The job a ticket runs: the one it ran before (a ticket taken over), or else the head
        job of the key with the fewest jobs taken in the fleet, then the key served least
        recently. None (the ticket let go) when that job was cancelled or no job waits."""
        legacy_id = text(fields.get(b"id", b""))  # an entry a pod before tickets wrote
        answer = self._bind(
            keys=[
                self.names.stream,
                self.names.tickets,
                self.names.waiting_keys,
                self.names.served,
                self.names.turns,
            ],
            args=[
                GROUP,
                entry_id,
                time.time(),
                time.time() + self.settings.job_timeout_s + self.settings.job_claim_timeout_s,
                self.names.root,
                legacy_id,
            ],
        )
        if answer is None:
            return None
        job_id, key, traceparent, body_text = answer
        taken = Taken(entry_id, text(job_id), text(key))
        trace = tracing.carried({"traceparent": text(traceparent)})
        return taken, fields.get(b"body", b"null") if legacy_id else body_text, trace

"""Async jobs of a fleet of pods sharing one Redis (STATE_URL): submitted, polled and cancelled
on any pod, run by whichever pod has a free ComfyUI; when jobs wait, the API keys take turns.

A submitted job is a record (a hash, `<prefix>:job:<id>`), its request as sent (a string,
`<prefix>:body:<id>`; an envelope stays sealed), its id in its key's line (a list,
`<prefix>:waiting:<key>`) and a ticket in one Redis Stream (`<prefix>:jobs`): one ticket per
waiting job, so the stream's lag is what waits (an autoscaler reads it). Every pod reads the
stream in one consumer group, and only while it has room on a ready ComfyUI instance. A pod that
reads a ticket binds it, in one atomic step (a script), to the first job in the line of the key
with the fewest jobs taken across the fleet (`<prefix>:inflight:<key>`), then of the key served
least recently, then of the oldest: one key's burst does not starve another key's job. A job
starts when its prompt leaves ComfyUI's queue, in one atomic step: the record turns `running`
under the pod's name and its ticket and request are deleted, so a job starts once, on one pod,
and a plain workflow leaves Redis when its job starts. Until then the ticket stays pending under
the pod that took it, which keeps it from the others (their XAUTOCLAIM) by claiming it again
every beat.

A pod shows it lives by a key it refreshes (`<prefix>:pod:<name>`, expiring after
JOB_CLAIM_TIMEOUT_S). Tickets a silent pod took but never started are claimed by another pod
(XAUTOCLAIM), which runs the job they were bound to; a job it had started is answered
`worker_lost`, since running it again would reach ComfyUI twice (and its envelope is spent).
When a pod's API process dies, its gunicorn master hands on at once what it left (`release`). A
cancel sets a flag in the record, which the pod holding the job reads four times a second (a
job still in its line leaves it at once). Records are kept JOB_TTL_S after they end.

A draining pod (services.core.drain) takes nothing and hands back what it was handed; a job
its drain's deadline cut, or one that had not started when the pod's last ComfyUI went down,
goes back to the queue as it was sent, under its id (the record is `queued` again), and runs
on another pod, where its envelope opens again for that job only. Handing back is claiming a
ticket for HANDED_BACK, idle past the claim timeout: the next pod that looks takes it over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.core import background, drain, errors, json_text, tracing
from services.core.config import Settings
from services.core.job_spec import Cancel
from services.core.offload import offload
from services.jobs import access, envelope, outcome, webhooks
from services.jobs.async_jobs import AsyncJob, JobStore, check_webhook
from services.jobs.pipeline import Pipeline
from services.jobs.quotas import Quotas
from services.jobs.state_store import Error, StateStore
from services.jobs.webhooks import FAILED, PENDING, Delivery, Webhooks

log = logging.getLogger("worker.jobs")
GROUP = "workers"
HANDED_BACK = "handed-back"  # the consumer entries a pod let go of wait under
_ELSEWHERE = {  # a job that answers one of these goes back to the queue, and why
    errors.ShuttingDown.code: "cut by the drain's deadline",
    errors.NotStartedHere.code: "not started when this pod's last ComfyUI went down",
}
BLOCK_MS = 1000  # a taking pod waits this long for an entry, then looks at its capacity again
BEHIND_S = 0.1  # how often a pod whose ComfyUIs are all busy looks for a job to queue behind
WATCH_S = 0.25  # how often a pod reads the cancel flags of the jobs it runs
RETRY_S = 0.5  # after Redis did not answer
FIRST_TURN = 1e10  # a key's turn before it was first served: its first job's time less this

_BIND = """
local p = ARGV[5]
local function let_go()
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return false
end
local function bound(job, key)
  redis.call('ZADD', p .. 'inflight:' .. key, ARGV[4], job)
  redis.call('EXPIREAT', p .. 'inflight:' .. key, math.ceil(tonumber(ARGV[4])))
  return {job, key, redis.call('HGET', p .. 'job:' .. job, 'traceparent') or '',
    redis.call('GET', p .. 'body:' .. job) or ''}
end
local job = redis.call('HGET', KEYS[2], ARGV[2])
if not job and ARGV[6] ~= '' then job = ARGV[6] end
if job then
  if redis.call('HGET', p .. 'job:' .. job, 'state') ~= 'queued' then return let_go() end
  return bound(job, redis.call('HGET', p .. 'job:' .. job, 'key') or '-')
end
while true do
  local served, flat = {}, redis.call('HGETALL', KEYS[4])
  for i = 1, #flat, 2 do served[flat[i]] = tonumber(flat[i + 1]) end
  local best, best_count, best_served
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local count = redis.call('ZCOUNT', p .. 'inflight:' .. key, ARGV[3], '+inf')
    local turn = served[key] or 0
    if not best or count < best_count or (count == best_count and turn < best_served) then
      best, best_count, best_served = key, count, turn
    end
  end
  if not best then return let_go() end
  job = redis.call('LPOP', p .. 'waiting:' .. best)
  if not job or redis.call('LLEN', p .. 'waiting:' .. best) == 0 then redis.call('SREM', KEYS[3], best) end
  if job and redis.call('HGET', p .. 'job:' .. job, 'state') == 'queued' then
    redis.call('ZREMRANGEBYSCORE', p .. 'inflight:' .. best, '-inf', ARGV[3])
    redis.call('HSET', KEYS[2], ARGV[2], job)
    redis.call('HSET', KEYS[4], best, redis.call('INCR', KEYS[5]))
    return bound(job, best)
  end
end
"""
_KEEP = """
local kept = 0
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('DEL', KEYS[5])
if state == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[3] then return 1 end
if state ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[3], 'started', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"""
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('XACK', KEYS[3], ARGV[8], ARGV[9])
redis.call('XDEL', KEYS[3], ARGV[9])
redis.call('HDEL', KEYS[4], ARGV[9])
redis.call('DEL', KEYS[5])
if not state then
  if ARGV[11] == '' then return -1 end
  redis.call('HSET', KEYS[1], 'key', ARGV[11], 'created', ARGV[5])
elseif state ~= 'queued' and not (state == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'result', ARGV[3], 'http_status', ARGV[4],
  'finished', ARGV[5], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SREM', KEYS[2], ARGV[7])
redis.call('ZREM', ARGV[10] .. 'inflight:' .. (redis.call('HGET', KEYS[1], 'key') or '-'), ARGV[7])
return 1
"""
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'result', ARGV[1], 'http_status', ARGV[2],
    'finished', ARGV[3], 'cancel', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  local key = redis.call('HGET', KEYS[1], 'key') or '-'
  redis.call('LREM', ARGV[5] .. 'waiting:' .. key, 0, ARGV[6])
  redis.call('ZREM', ARGV[5] .. 'inflight:' .. key, ARGV[6])
  redis.call('DEL', ARGV[5] .. 'body:' .. ARGV[6])
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
"""
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'queued')
redis.call('HDEL', KEYS[1], 'owner', 'started', 'progress')
redis.call('SREM', KEYS[2], ARGV[2])
local key = redis.call('HGET', KEYS[1], 'key') or '-'
redis.call('SET', ARGV[4] .. 'body:' .. ARGV[2], ARGV[3])
redis.call('LPUSH', ARGV[4] .. 'waiting:' .. key, ARGV[2])
redis.call('SADD', ARGV[4] .. 'waiting', key)
redis.call('ZREM', ARGV[4] .. 'inflight:' .. key, ARGV[2])
redis.call('XADD', KEYS[3], '*', 'ticket', '1')
return 1
"""
_CLAIM_WEBHOOK = """
local owner = redis.call('HGET', KEYS[1], 'webhook_owner')
if not owner then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 0
end
if owner ~= '' and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_owner', ARGV[1])
return 1
"""
_HSET_KEPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
_WEBHOOK_KEPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_url', ARGV[1], 'webhook_body', ARGV[2], 'webhook_owner', ARGV[3],
  'webhook_state', 'pending', 'webhook_attempts', 0)
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""
_WEBHOOK_CHANGED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'webhook_state', ARGV[1], 'webhook_attempts', ARGV[2],
  'webhook_last_status', ARGV[3])
if ARGV[1] ~= 'pending' then
  redis.call('HDEL', KEYS[1], 'webhook_url', 'webhook_body', 'webhook_owner')
  redis.call('SREM', KEYS[2], ARGV[4])
end
return 1
"""
_LOST = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  redis.call('SREM', KEYS[2], ARGV[5])
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'failed', 'result', ARGV[2], 'http_status', ARGV[3], 'finished', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SREM', KEYS[2], ARGV[5])
redis.call('ZREM', ARGV[7] .. 'inflight:' .. (redis.call('HGET', KEYS[1], 'key') or '-'), ARGV[5])
return 1
"""


@dataclass(eq=False)
class _Taken:
    """A job this pod took from the stream. Not started (its entry pending here) until its
    prompt leaves ComfyUI's queue."""

    entry_id: str
    job_id: str
    key: str  # the name of the API key that submitted it
    cancel: Cancel = field(default_factory=Cancel)
    started: bool = False  # its record is `running` under this pod
    dropped: bool = False  # handed back (the pod drains or stops): this run answers nothing
    unsure: bool = False  # its start was sent but Redis never said whether it took
    kept: float = field(default_factory=time.monotonic)  # its ticket's idle time last began again
    lock: threading.Lock = field(default_factory=threading.Lock)  # over started and dropped


class SharedJobs(JobStore):
    """`capacity(own)`: how many more jobs this pod's ComfyUIs would take now, given `own` jobs
    it took (ComfyPool.spare); `at_once(own)`: how many of those would start at once, not queued
    behind a running one (None: all)."""

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
        self.capacity = capacity
        self.at_once = at_once
        self.quotas = quotas
        self.webhooks = webhooks
        self.webhook_set = store.key("webhooks")  # job ids whose webhook is still pending
        self._delivering: set[str] = set()  # ... delivered by this pod
        self.name = _name_prefix(os.getpid()) + uuid.uuid4().hex[:6]
        quotas.held_by(self.name)  # its slots live while this pod does
        self.stream = store.key("jobs")
        self.running_set = store.key("running")
        self.taken_over = 0
        self.lost = 0
        self._taken: dict[str, _Taken] = {}  # by stream entry
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._closing = False
        self._scripts = {
            name: store.redis.register_script(text)
            for name, text in (
                ("bind", _BIND),
                ("keep", _KEEP),
                ("start", _START),
                ("finish", _FINISH),
                ("cancel", _CANCEL),
                ("requeue", _REQUEUE),
                ("claim_webhook", _CLAIM_WEBHOOK),
                ("lost", _LOST),
                ("hset_kept", _HSET_KEPT),
                ("webhook_kept", _WEBHOOK_KEPT),
                ("webhook_changed", _WEBHOOK_CHANGED),
            )
        }
        self._next_beat = 0.0  # when the watch round next proves this pod lives
        self._ensure_group()
        with contextlib.suppress(Error):  # before it can take a job: a pod with no proof of
            self._beat()  # life yet has its jobs answered worker_lost by any other pod
        background.loop("shared-jobs-take", self._take_round, RETRY_S, until=lambda: self._closing)
        background.loop("shared-jobs-watch", self._watch_round, WATCH_S)

    # what the routes call ------------------------------------------------------------------
    def start(
        self, body: Any, trace: Mapping[str, str] | None = None, owner: str = "-", slot: str | None = None
    ) -> AsyncJob:
        check_webhook(body, self.pipeline)
        job = AsyncJob(id=slot or str(uuid.uuid4()), owner=owner, slotted=slot is not None)
        job.trace = tracing.submitted(trace, **{"job.id": job.id})  # the pod that runs it goes on
        traceparent = job.trace.get("traceparent", "")
        text = offload(json_text.dumps, body, size=json_text.size_hint(body))
        try:
            with self.store.redis.pipeline(transaction=True) as tx:
                record = {
                    "state": "queued",
                    "created": job.created,
                    "traceparent": traceparent,
                    "key": owner,
                    "slot": int(job.slotted),
                }
                tx.hset(self._job_key(job.id), mapping=record)
                tx.set(self.store.key("body", job.id), text)
                tx.rpush(self.store.key("waiting", owner), job.id)
                tx.sadd(self.store.key("waiting"), owner)
                # a key never served yet goes before the keys served, in the order of their first jobs
                tx.hsetnx(self.store.key("served"), owner, job.created - FIRST_TURN)
                tx.xadd(self.stream, {"ticket": "1"})
                tx.execute()
        except Error as exc:
            raise self.store.unavailable(exc) from None
        self.store.reached(True)
        return job

    def get(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        record = self._record(job_id)
        # a record without a key (a pod before named keys wrote it) is no named key's: only an
        # open worker's ("-", where every job is anyone's)
        if not record or (owner is not None and record.get("key", access.OPEN.name) != owner):
            return None
        if record.get("state") == "running" and self._declare_lost(job_id, record.get("owner", "")):
            record = self._record(job_id)
        return _job(job_id, record) if record else None

    def cancel(self, job_id: str, owner: str | None = None) -> AsyncJob | None:
        if self.get(job_id, owner) is None:
            return None
        interrupted = errors.Interrupted("the job was cancelled")
        try:
            state = self._scripts["cancel"](
                keys=[self._job_key(job_id)],
                args=[
                    _dumps(interrupted.to_dict()),
                    interrupted.http_status,
                    time.time(),
                    self._ttl(),
                    self.store.key(""),
                    job_id,
                ],
            )
        except Error as exc:
            raise self.store.unavailable(exc) from None
        if state == b"queued":  # it ended now, before any pod started it
            self._ended(job_id)
        return self.get(job_id, owner)

    def queue(self) -> tuple[int | None, int] | None:
        """The consumer group's (lag, pending) as XINFO GROUPS reports them: entries no pod took
        yet (None where Redis cannot tell), and entries taken but not started. None when Redis
        does not answer. The lag is what an autoscaler reads (KEDA's redis-streams scaler)."""
        try:
            groups = self.store.redis.xinfo_groups(self.stream)
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
        with self._lock:
            self._closing = True
        self._changed.set()
        held = self._let_go(
            errors.ShuttingDown("this pod's API process stops; the job went back to the fleet's queue")
        )
        log.info("stopped taking jobs from the fleet's queue; %d taken but not started go back", held)
        self._hand_back_webhooks()

    def _let_go(self, stop: errors.WorkerError) -> int:
        """Hand back the jobs taken here that have not started (their prompts wait in ComfyUI's
        queue), for another pod at once, and take them out of ComfyUI. How many."""
        with self._lock:
            candidates = [taken for taken in self._taken.values() if not taken.dropped]
        held = []
        for taken in candidates:
            with taken.lock:
                if not taken.started and not taken.dropped:
                    taken.dropped = True
                    held.append(taken)
        _hand_back(self.store, self.settings, [taken.entry_id for taken in held])
        for taken in held:  # out of ComfyUI's queue
            taken.cancel.stop(stop)
        return len(held)

    def _hand_back_webhooks(self) -> None:
        """Webhooks still pending here go to whichever pod looks next (at least once: one this
        pod is sending may be sent again)."""
        try:
            for job_id in list(self._delivering):
                self._hset_kept(job_id, "webhook_owner", "")
        except Error as exc:
            log.warning(
                "could not hand back pending webhooks (%s); taken over once this pod is silent",
                type(exc).__name__,
            )

    # taking and running --------------------------------------------------------------------
    def _take_round(self) -> None:
        """Take as many entries as this pod would start now, and start them."""
        with self._lock:
            own = len(self._taken)
        draining = drain.since(self.settings.run_layout) is not None  # it takes nothing new
        if draining and own:  # ... and what waits here behind a running job runs elsewhere
            let_go = self._let_go(
                errors.ShuttingDown("this pod drains; the job went back to the fleet's queue")
            )
            if let_go:
                log.info("draining: %d job(s) taken but not started went back to the fleet's queue", let_go)
        free = 0 if draining else self.capacity(own)
        if free <= 0:
            self._changed.wait(RETRY_S)
            self._changed.clear()
            return
        if self.at_once is not None and self.at_once(own) <= 0:
            # only room behind a running job: a pod with an idle ComfyUI, blocked on the stream,
            # is served first; this one looks now and then
            self._changed.wait(BEHIND_S)
            self._changed.clear()
            block = None
        else:
            block = BLOCK_MS
        try:
            entries = self._take(free, block)
        except Error as exc:
            self.store.reached(False, exc)
            if "NOGROUP" in str(exc):
                self._ensure_group()
            time.sleep(RETRY_S)
            return
        self.store.reached(True)
        if entries and drain.since(self.settings.run_layout) is not None:  # began while it waited
            _hand_back(self.store, self.settings, [entry_id for entry_id, _ in entries])
            return
        for entry_id, fields in entries:
            self._begin(entry_id, fields)

    def _take(self, count: int, block: int | None) -> list[tuple[str, dict]]:
        """Entries a silent pod took and never started first, then new ones (waiting up to
        `block` ms for one)."""
        redis = self.store.redis
        claim_ms = int(self.settings.job_claim_timeout_s * 1000)
        _cursor, claimed, *_deleted = redis.xautoclaim(
            self.stream, GROUP, self.name, claim_ms, "0-0", count=count
        )
        if claimed:
            self.taken_over += len(claimed)
            log.info("took over %d job(s) another pod took and never started", len(claimed))
            return [(_text(i), f) for i, f in claimed]
        answer = redis.xreadgroup(GROUP, self.name, {self.stream: ">"}, count=count, block=block)
        return [(_text(i), f) for _stream, entries in answer or [] for i, f in entries]

    def _begin(self, entry_id: str, fields: dict) -> None:
        try:
            bound = self._bind(entry_id, fields)
        except Error as exc:
            self.store.reached(False, exc)
            return  # still pending: taken over after the claim timeout
        if bound is None:
            return
        taken, body_text, trace = bound
        with self._lock:
            closing = self._closing
            if not closing:
                self._taken[entry_id] = taken
        if closing:
            _hand_back(self.store, self.settings, [entry_id])
            return
        background.start("shared-job", self._run, taken, body_text, trace)

    def _bind(self, entry_id: str, fields: dict) -> tuple[_Taken, bytes, dict[str, str]] | None:
        """The job a ticket runs: the one it ran before (a ticket taken over), or else the head
        job of the key with the fewest jobs taken in the fleet, then the key served least
        recently. None (the ticket let go) when that job was cancelled or no job waits."""
        legacy_id = _text(fields.get(b"id", b""))  # an entry a pod before tickets wrote
        answer = self._scripts["bind"](
            keys=[
                self.stream,
                self.store.key("tickets"),
                self.store.key("waiting"),
                self.store.key("served"),
                self.store.key("turns"),
            ],
            args=[
                GROUP,
                entry_id,
                time.time(),
                time.time() + self.settings.job_timeout_s + self.settings.job_ttl_s,
                self.store.key(""),
                legacy_id,
            ],
        )
        if answer is None:
            return None
        job_id, key, traceparent, body_text = answer
        taken = _Taken(entry_id, _text(job_id), _text(key))
        trace = tracing.carried({"traceparent": _text(traceparent)})
        return taken, fields.get(b"body", b"null") if legacy_id else body_text, trace

    def _run(self, taken: _Taken, body_text: bytes, trace: dict[str, str]) -> None:
        try:
            # held until its outcome is in Redis (the pipeline's own hold ends with its answer)
            with self._in_hand("fleet-job"), tracing.job(trace, **{"job.id": taken.job_id}):
                self._execute(taken, body_text, trace)
        finally:
            with self._lock:
                self._taken.pop(taken.entry_id, None)
            self._changed.set()

    def _in_hand(self, kind: str) -> contextlib.AbstractContextManager:
        in_hand = self.pipeline.in_hand
        return in_hand.hold(kind, cut=lambda: None) if in_hand else contextlib.nullcontext()

    def _started(self, taken: _Taken) -> None:
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

    def _write_start(self, taken: _Taken) -> bool | None:
        """Whether the job's start was written (False: cancelled, or started elsewhere), trying
        again while Redis does not answer; None when it did not answer before another pod may
        take the job's ticket over (JOB_CLAIM_TIMEOUT_S after it was last kept, with a margin)."""
        give_up = taken.kept + self.settings.job_claim_timeout_s * 2 / 3
        while True:
            try:
                written = self._scripts["start"](
                    keys=[
                        self._job_key(taken.job_id),
                        self.running_set,
                        self.stream,
                        self.store.key("tickets"),
                        self.store.key("body", taken.job_id),
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

    def _execute(self, taken: _Taken, body_text: bytes, trace: dict[str, str]) -> None:
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
        if reply.error_code in _ELSEWHERE and self._requeue(taken, body_text, reply.error_code):
            return
        state = outcome.of_reply(reply.status, reply.error_code, cancel.is_set())
        with tracing.stage("result.store"):
            result = offload(json_text.dumps, reply.body, size=json_text.size_hint(reply.body))
            finished = self._finish(taken, state, result, reply.status)
        if finished:
            self._ended(job_id)
            job = AsyncJob(id=job_id, state=state, result=reply.body, http_status=reply.status, trace=trace)
            view = job.view()
        else:  # answered elsewhere meanwhile: the webhook tells what the record says
            view = self._ended_view(job_id)
        if reply.webhook and self.webhooks is not None and view is not None:
            sent = webhooks.event(view["state"], view, self.settings)
            self._send_webhook(job_id, reply.webhook, sent, trace=tracing.carrier_of_current())

    def _ended_view(self, job_id: str) -> dict | None:
        try:
            record = self._record(job_id)
        except errors.StateUnavailable:
            return None
        return _job(job_id, record).view() if record.get("state") in outcome.ENDED else None

    # webhooks: the pod that ran the job sends; a silent or stopping pod's are taken over -------
    def _send_webhook(
        self,
        job_id: str,
        url: str,
        body: str,
        delivery: Delivery | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> None:
        """`trace`: the job's span, or its submission's for a delivery taken over."""
        if delivery is None:
            keyring = self.pipeline.keyring
            kept_url = envelope.keep_secret(url, keyring) if keyring else url
            try:  # not when the record expired: a key written anew would never expire
                self._scripts["webhook_kept"](
                    keys=[self._job_key(job_id), self.webhook_set],
                    args=[kept_url, body, self.name, job_id],
                )
            except Error as exc:
                self.store.reached(False, exc)  # delivered all the same, by this pod only
        self._delivering.add(job_id)
        self.webhooks.send(
            url, body, job_id, delivery, lambda d: self._webhook_changed(job_id, d), hold=False, trace=trace
        )

    def _webhook_changed(self, job_id: str, delivery: Delivery) -> None:
        try:  # the record keeps its TTL: an expired one is not written anew
            self._scripts["webhook_changed"](
                keys=[self._job_key(job_id), self.webhook_set],
                args=[delivery.state, delivery.attempts, delivery.last_status or "", job_id],
            )
        except Error as exc:
            self.store.reached(False, exc)
        if delivery.state != PENDING:
            self._delivering.discard(job_id)

    def _take_over_webhooks(self) -> None:
        """Deliveries whose pod went silent or stopped, from the attempt where it left off."""
        if self.webhooks is None:
            return
        redis = self.store.redis
        for job_id in map(_text, redis.smembers(self.webhook_set)):
            if job_id in self._delivering:
                continue
            claimed = self._scripts["claim_webhook"](
                keys=[self._job_key(job_id), self.webhook_set],
                args=[self.name, job_id, self.store.key("pod", "")],
            )
            if not claimed:
                continue
            record = self._record(job_id)
            keyring = self.pipeline.keyring
            attempts = int(record.get("webhook_attempts") or 0)
            try:
                url = (
                    envelope.open_secret(record["webhook_url"], keyring) if keyring else record["webhook_url"]
                )
            except (errors.InvalidCiphertext, KeyError):
                log.warning(
                    "the pending webhook of job %s is sealed to none of this pod's keys: it fails",
                    job_id,
                    extra={"event": "webhook.failed", "job_id": job_id},
                )
                self._webhook_changed(job_id, Delivery(FAILED, attempts))
                continue
            log.info(
                "took over the pending webhook of job %s from a pod that went silent or stopped",
                job_id,
                extra={"event": "webhook.taken_over", "job_id": job_id},
            )
            delivery, trace = Delivery(attempts=attempts), tracing.carried(record)
            self._send_webhook(job_id, url, record["webhook_body"], delivery, trace)

    def _requeue(self, taken: _Taken, body_text: bytes, code: str) -> bool:
        """A job that did not run here to its end (the drain's deadline cut it, or it had not
        started when this pod's last ComfyUI went down) goes back to the queue as it was sent,
        under its id, for another pod (its envelope opens again there for this job only): a
        started one first in its key's line with a new ticket, one not started by handing its
        ticket back. False when Redis
        does not answer or the job is no longer this pod's."""
        job_id = taken.job_id
        again = False
        if taken.started or taken.unsure:  # an unsure start may have been written
            try:
                again = self._scripts["requeue"](
                    keys=[self._job_key(job_id), self.running_set, self.stream],
                    args=[self.name, job_id, body_text, self.store.key("")],
                )
            except Error as exc:
                self.store.reached(False, exc)
                return False
        if not again and not taken.started:
            again = _hand_back(self.store, self.settings, [taken.entry_id])
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
            self._hset_kept(job_id, "progress", _dumps(update))
        except Error as exc:
            self.store.reached(False, exc)

    def _hset_kept(self, job_id: str, name: str, value: str) -> None:
        """Set a field of a record that still exists (an expired one is not made anew, TTL-less)."""
        self._scripts["hset_kept"](keys=[self._job_key(job_id)], args=[name, value])

    def _finish(self, taken: _Taken, state: str, result: str, status: int) -> bool:
        """Write the outcome (and let go of the entry of a job that ended before it started),
        waiting out a Redis that does not answer (for up to JOB_TTL_S): a job that ran is never
        lost to an outage, nor to a Redis that restarted empty (its record is written again,
        with its key: only that key sees it). False: the job was answered elsewhere meanwhile
        (cancelled, declared worker_lost, run by another pod), and that stays its outcome, or it
        had not started and its record is gone."""
        job_id = taken.job_id
        deadline = time.monotonic() + self.settings.job_ttl_s
        while True:
            try:
                written = self._scripts["finish"](
                    keys=[
                        self._job_key(job_id),
                        self.running_set,
                        self.stream,
                        self.store.key("tickets"),
                        self.store.key("body", job_id),
                    ],
                    args=[
                        self.name,
                        state,
                        result,
                        status,
                        time.time(),
                        self._ttl(),
                        job_id,
                        GROUP,
                        taken.entry_id,
                        self.store.key(""),
                        taken.key if taken.started else "",  # a record Redis lost: whose it was
                    ],
                )
            except Error as exc:
                self.store.reached(False, exc)
                if time.monotonic() > deadline:
                    log.error(
                        "dropped the outcome of job %s: the shared state did not answer for JOB_TTL_S",
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

    # liveness, cancels and lost pods -------------------------------------------------------
    def _watch_round(self) -> None:
        """Read the cancel flags of the jobs running here; now and then prove this pod lives
        and answer for the jobs of pods that went silent."""
        try:
            self._read_cancels()
            if time.monotonic() >= self._next_beat:
                self._beat()
                self._keep()
                self._reap()
                self._take_over_webhooks()
                self._next_beat = time.monotonic() + max(WATCH_S, self.settings.job_claim_timeout_s / 3)
        except Error as exc:
            self.store.reached(False, exc)
        except errors.StateUnavailable:
            pass  # recorded where it was raised
        time.sleep(WATCH_S)

    def _beat(self) -> None:
        ttl_ms = int(self.settings.job_claim_timeout_s * 1000)
        self.store.redis.set(self.store.key("pod", self.name), b"1", px=ttl_ms)
        self.store.reached(True)

    def _keep(self) -> None:
        """Claim again the entries this pod holds and has not started, so no other pod takes
        them over (their idle time restarts); one already handed back or taken over is left."""
        with self._lock:
            held = [taken for taken in self._taken.values() if not taken.started]
        if held:
            now = time.monotonic()
            self._scripts["keep"](keys=[self.stream], args=[GROUP, self.name, *(t.entry_id for t in held)])
            for taken in held:
                taken.kept = now

    def _read_cancels(self) -> None:
        with self._lock:
            running = [(taken.job_id, taken.cancel) for taken in self._taken.values()]
        if not running:
            return
        with self.store.redis.pipeline(transaction=False) as reads:
            for job_id, _event in running:
                reads.hget(self._job_key(job_id), "cancel")
            flags = reads.execute()
        for (_job_id, event), flag in zip(running, flags, strict=True):
            if flag == b"1":
                event.set()

    def _reap(self) -> None:
        """Answer `worker_lost` for jobs whose pod went silent."""
        for job_id in map(_text, self.store.redis.smembers(self.running_set)):
            owner = _text(self.store.redis.hget(self._job_key(job_id), "owner") or b"")
            self._declare_lost(job_id, owner)

    def _declare_lost(self, job_id: str, owner: str) -> bool:
        if owner == self.name:
            return False
        lost = errors.WorkerLost(
            "the pod running this job stopped answering after the job reached ComfyUI; send it again"
        )
        try:
            declared = self._scripts["lost"](
                keys=[self._job_key(job_id), self.running_set, self.store.key("pod", owner)],
                args=[
                    owner,
                    _dumps(lost.to_dict()),
                    lost.http_status,
                    time.time(),
                    job_id,
                    self._ttl(),
                    self.store.key(""),
                ],
            )
        except Error as exc:
            raise self.store.unavailable(exc) from None
        if declared:
            self._ended(job_id)
            self.lost += 1
            log.warning(
                "the pod of job %s went silent: answered worker_lost",
                job_id,
                extra={"event": "job.worker_lost", "job_id": job_id},
            )
        return bool(declared)

    def _ended(self, job_id: str) -> None:
        """The job ended: its key's slot, if it took one, is free (services.jobs.quotas)."""
        try:
            key, slotted = self.store.redis.hmget(self._job_key(job_id), "key", "slot")
        except Error as exc:
            self.store.reached(False, exc)  # a take drops the slot once it sees the job ended
            return
        if slotted == b"1":
            self.quotas.give_back(_text(key or b"-"), job_id)

    # records ---------------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        try:
            self.store.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except Error as exc:
            if "BUSYGROUP" not in str(exc):
                self.store.reached(False, exc)

    def _record(self, job_id: str) -> dict[str, str]:
        try:
            raw = self.store.redis.hgetall(self._job_key(job_id))
        except Error as exc:
            raise self.store.unavailable(exc) from None
        return {_text(k): _text(v) for k, v in raw.items()}

    def _job_key(self, job_id: str) -> str:
        return self.store.key("job", job_id)

    def _ttl(self) -> int:
        return max(1, int(self.settings.job_ttl_s))


def release(store: StateStore, settings: Settings, pid: int) -> int:
    """Hand on at once what the API process `pid` of this host left when it died: the jobs it
    took and had not started go back to the stream, and its proof of life goes, so its running
    jobs are answered `worker_lost` at the next look of any pod and the quota slots of its sync
    jobs are free at the next take (services.jobs.quotas). How many went back."""
    stream, handed = store.key("jobs"), 0
    for consumer in store.redis.xinfo_consumers(stream, GROUP):
        name = _text(consumer["name"])
        if not name.startswith(_name_prefix(pid)):
            continue
        pending = store.redis.xpending_range(stream, GROUP, "-", "+", 100_000, consumername=name)
        entry_ids = [_text(entry["message_id"]) for entry in pending]
        if entry_ids and _hand_back(store, settings, entry_ids):
            handed += len(entry_ids)
    # its proof of life: its running jobs are lost, and its sync jobs' quota slots free
    for pod in store.redis.scan_iter(match=store.key("pod", _name_prefix(pid) + "*")):
        store.redis.delete(pod)
    return handed


def _hand_back(store: StateStore, settings: Settings, entry_ids: list[str]) -> bool:
    """Entries a pod took but will not start: idle past the claim timeout, so the next pod that
    looks takes them over at once. False when Redis did not answer."""
    if not entry_ids:
        return True
    idle_ms = int(settings.job_claim_timeout_s * 1000) * 2
    try:
        store.redis.xclaim(store.key("jobs"), GROUP, HANDED_BACK, 0, entry_ids, idle=idle_ms, justid=True)
    except Error as exc:
        store.reached(False, exc)
        log.warning(
            "could not hand back %d job(s): %s; they are taken over after the claim timeout",
            len(entry_ids),
            type(exc).__name__,
        )
        return False
    return True


def _name_prefix(pid: int) -> str:
    """How the names of this host's process `pid` begin (as a pod of the fleet)."""
    return f"{socket.gethostname()}-{pid}-"


def _job(job_id: str, record: dict[str, str]) -> AsyncJob:
    result = record.get("result")
    job = AsyncJob(
        id=job_id,
        state=record.get("state", "queued"),
        created=float(record.get("created", 0) or 0),
        finished=float(record["finished"]) if "finished" in record else None,
        progress=json.loads(record["progress"]) if "progress" in record else None,
        result=offload(json.loads, result, size=len(result)) if result is not None else None,
        http_status=int(record["http_status"]) if "http_status" in record else None,
        trace=tracing.carried(record),
    )
    if record.get("cancel") == "1":
        job.cancel.set()
    if "webhook_state" in record:
        status = record.get("webhook_last_status")
        job.webhook = Delivery(
            record["webhook_state"], int(record.get("webhook_attempts") or 0), int(status) if status else None
        )
    return job


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

"""How a pod of the fleet shows it lives and answers for the pods that went silent.

A pod shows it lives by a key it refreshes (`pod:<name>`, expiring after JOB_CLAIM_TIMEOUT_S),
and claims again every beat the tickets it took and has not started, so no other pod takes them
over. Tickets a silent pod took but never started are claimed by another pod (XAUTOCLAIM, in
services.jobs.fleet.taking), which runs the job they were bound to; a job it had started is
answered `worker_lost`, since running it again would reach ComfyUI twice (and its envelope is
spent). When a pod's API process dies, its gunicorn master hands on at once what it left
(`release`). Handing back is claiming a ticket for HANDED_BACK, idle past the claim timeout: the
next pod that looks takes it over. Cancel flags of the jobs running here are read four times a
second.
"""

from __future__ import annotations

import logging
import socket
import time

from services.core import errors
from services.core.config import Settings
from services.jobs.fleet.deliveries import Deliveries
from services.jobs.fleet.records import Records, dumps, text
from services.jobs.fleet.state_store import Error, StateStore
from services.jobs.fleet.taken import Part, Pod

log = logging.getLogger("worker.jobs")
GROUP = "workers"  # the stream's one consumer group
HANDED_BACK = "handed-back"  # the consumer entries a pod let go of wait under
WATCH_S = 0.25  # how often a pod reads the cancel flags of the jobs it runs


class Liveness(Part):
    def __init__(self, pod: Pod, records: Records, deliveries: Deliveries) -> None:
        super().__init__(pod)
        self.records = records
        self.deliveries = deliveries
        self.lost = 0  # jobs of silent pods this pod answered worker_lost
        self._keep = pod.store.script("keep")
        self._lost = pod.store.script("lost")
        self._next_beat = 0.0  # when the watch round next proves this pod lives

    def round(self) -> None:
        """Read the cancel flags of the jobs running here; now and then prove this pod lives
        and answer for the jobs of pods that went silent."""
        try:
            self.read_cancels()
            if time.monotonic() >= self._next_beat:
                self.beat()
                self.keep()
                self.reap()
                self.deliveries.take_over()
                self._next_beat = time.monotonic() + max(WATCH_S, self.settings.job_claim_timeout_s / 3)
        except Error as exc:
            self.store.reached(False, exc)
        except errors.StateUnavailable:
            pass  # recorded where it was raised
        time.sleep(WATCH_S)

    def beat(self) -> None:
        ttl_ms = int(self.settings.job_claim_timeout_s * 1000)
        self.store.redis.set(self.names.pod(self.name), b"1", px=ttl_ms)
        self.store.reached(True)

    def keep(self) -> None:
        """Claim again the entries this pod holds and has not started, so no other pod takes
        them over (their idle time restarts); one already handed back or taken over is left."""
        held = [taken for taken in self.taken.all() if not taken.started]
        if held:
            now = time.monotonic()
            self._keep(keys=[self.names.stream], args=[GROUP, self.name, *(t.entry_id for t in held)])
            for taken in held:
                taken.kept = now

    def read_cancels(self) -> None:
        running = [(taken.job_id, taken.cancel) for taken in self.taken.all()]
        if not running:
            return
        with self.store.redis.pipeline(transaction=False) as reads:
            for job_id, _event in running:
                reads.hget(self.names.job(job_id), "cancel")
            flags = reads.execute()
        for (_job_id, event), flag in zip(running, flags, strict=True):
            if flag == b"1":
                event.set()

    def reap(self) -> None:
        """Answer `worker_lost` for jobs whose pod went silent."""
        for job_id in map(text, self.store.redis.smembers(self.names.running)):
            owner = text(self.store.redis.hget(self.names.job(job_id), "owner") or b"")
            self.declare_lost(job_id, owner)

    def declare_lost(self, job_id: str, owner: str) -> bool:
        """Whether the job of a silent pod `owner` was answered `worker_lost` now."""
        if owner == self.name:
            return False
        lost = errors.WorkerLost(
            "the pod running this job stopped answering after the job reached ComfyUI; send it again"
        )
        try:
            declared = self._lost(
                keys=[self.names.job(job_id), self.names.running, self.names.pod(owner)],
                args=[
                    owner,
                    dumps(lost.to_dict()),
                    lost.http_status,
                    time.time(),
                    job_id,
                    self.records.ttl(),
                    self.names.root,
                ],
            )
        except Error as exc:
            raise self.store.unavailable(exc) from None
        if declared:
            self.records.ended(job_id)
            self.lost += 1
            log.warning(
                "the pod of job %s went silent: answered worker_lost",
                job_id,
                extra={"event": "job.worker_lost", "job_id": job_id},
            )
        return bool(declared)


def release(store: StateStore, settings: Settings, pid: int) -> int:
    """Hand on at once what the API process `pid` of this host left when it died: the jobs it
    took and had not started go back to the stream, and its proof of life goes, so its running
    jobs are answered `worker_lost` at the next look of any pod and the quota slots of its sync
    jobs are free at the next take (services.jobs.quotas). How many went back."""
    stream, handed = store.names.stream, 0
    for consumer in store.redis.xinfo_consumers(stream, GROUP):
        name = text(consumer["name"])
        if not name.startswith(name_prefix(pid)):
            continue
        pending = store.redis.xpending_range(stream, GROUP, "-", "+", 100_000, consumername=name)
        entry_ids = [text(entry["message_id"]) for entry in pending]
        if entry_ids and hand_back(store, settings, entry_ids):
            handed += len(entry_ids)
    # its proof of life: its running jobs are lost, and its sync jobs' quota slots free
    for pod in store.redis.scan_iter(match=store.names.pod(name_prefix(pid) + "*")):
        store.redis.delete(pod)
    return handed


def hand_back(store: StateStore, settings: Settings, entry_ids: list[str]) -> bool:
    """Entries a pod took but will not start: idle past the claim timeout, so the next pod that
    looks takes them over at once. False when Redis did not answer."""
    if not entry_ids:
        return True
    idle_ms = int(settings.job_claim_timeout_s * 1000) * 2
    try:
        store.redis.xclaim(store.names.stream, GROUP, HANDED_BACK, 0, entry_ids, idle=idle_ms, justid=True)
    except Error as exc:
        store.reached(False, exc)
        log.warning(
            "could not hand back %d job(s): %s; they are taken over after the claim timeout",
            len(entry_ids),
            type(exc).__name__,
        )
        return False
    return True


def name_prefix(pid: int) -> str:
    """How the names of this host's process `pid` begin (as a pod of the fleet)."""
    return f"{socket.gethostname()}-{pid}-"

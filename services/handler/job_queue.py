"""The local queue's job table: RunPod's job states and FIFO, kept in memory as RunPod keeps
them (sync results a minute, async ones half an hour). The HTTP side is services.handler.local_queue.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.jobs.outcome import RUNPOD_FINAL
from services.jobs.quotas import Slot

log = logging.getLogger("worker.local_queue")

KEEP_S = {"sync": 60.0, "async": 1800.0}  # how long RunPod keeps finished results


@dataclass
class Job:
    id: str
    input: dict
    sync: bool
    created: float = field(default_factory=time.time)
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: Any = None
    progress: Any = None
    stream: list = field(default_factory=list)
    webhook: str | None = field(default=None, repr=False)  # RunPod's own: told the status at the end
    owner: str = "-"  # the name of the API key that submitted it: only that key sees it
    slot: Slot = field(default_factory=Slot, repr=False)  # its key's job slot, given back at its end

    def view(self) -> dict:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished is not None and self.started is not None:
            body["executionTime"] = int((self.finished - self.started) * 1000)
        if self.worker_id:
            body["workerId"] = self.worker_id
        if self.status == "COMPLETED" and self.output is not None:
            body["output"] = self.output
        elif self.status == "FAILED":
            body["error"] = self.error
        elif self.status == "IN_PROGRESS" and self.progress is not None:
            body["output"] = self.progress
        return body


class Queue:
    """Job table and FIFO; one condition variable wakes every waiter on any change."""

    def __init__(
        self,
        on_end: Callable[[Job], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.on_end = on_end  # told of each job that ends (the metrics)
        self.on_forget = on_forget  # told of each ended job whose record is dropped
        self.jobs: dict[str, Job] = {}
        self.pending: deque[str] = deque()
        self.to_stop: set[str] = set()
        self.changed = threading.Condition()
        self.counts = {"completed": 0, "failed": 0, "retried": 0}

    def submit(
        self,
        payload: dict,
        sync: bool,
        webhook: str | None = None,
        owner: str = "-",
        slot: Slot | None = None,
    ) -> Job:
        """A job, queued; it keeps `slot` (the key's job slot its request took) until it ends."""
        job = Job(
            id=("sync-" if sync else "") + str(uuid.uuid4()),
            input=payload,
            sync=sync,
            webhook=webhook,
            owner=owner,
            slot=slot.keep() if slot is not None else Slot(),
        )
        with self.changed:
            self._prune()
            self.jobs[job.id] = job
            self.pending.append(job.id)
            self.changed.notify_all()
        return job

    def wait_final(self, job: Job, timeout: float) -> None:
        with self.changed:
            self.changed.wait_for(lambda: job.status in RUNPOD_FINAL, timeout=timeout)

    def take(self, worker_id: str, count: int, hold: float) -> list[Job]:
        with self.changed:
            self._prune()  # the SDK asks every few seconds: old records go without a new submit
            self.changed.wait_for(lambda: self.pending, timeout=hold)
            taken = []
            while self.pending and len(taken) < count:
                job = self.jobs[self.pending.popleft()]
                job.status, job.started, job.worker_id = "IN_PROGRESS", time.time(), worker_id
                taken.append(job)
            return taken

    def done(self, job_id: str, result: dict) -> None:
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status in RUNPOD_FINAL:
                return
            if result.get("status") == "IN_PROGRESS":
                job.progress = result.get("output")
            elif "error" in result:
                job.status, job.error, job.finished = "FAILED", result["error"], time.time()
                self.counts["failed"] += 1
            else:
                job.status, job.output, job.finished = "COMPLETED", result.get("output"), time.time()
                self.counts["completed"] += 1
            if job.status in RUNPOD_FINAL:
                log.info("job %s %s", job.id, job.status)
                if result.get("stopPod"):  # the SDK's form of the handler's refresh_worker
                    log.warning(
                        "job %s: the worker asked to be replaced (RunPod stops it after the job)", job.id
                    )
                self._ended(job)
            self.changed.notify_all()

    def fail_queued(self, job_id: str, error: str) -> None:
        """A job no worker took ends FAILED with `error` (the drain's deadline passed)."""
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status != "IN_QUEUE":
                return
            self.pending.remove(job_id)
            job.status, job.error, job.finished = "FAILED", error, time.time()
            self.counts["failed"] += 1
            self._ended(job)
            self.changed.notify_all()

    def streamed(self, job_id: str, result: dict) -> None:
        with self.changed:
            job = self.jobs.get(job_id)
            if job is not None and "output" in result:
                job.stream.append({"output": result["output"]})
                self.changed.notify_all()

    def cancel(self, job_id: str) -> Job | None:
        with self.changed:
            job = self.jobs.get(job_id)
            if job is None or job.status in RUNPOD_FINAL:
                return job
            if job.status == "IN_QUEUE":
                self.pending.remove(job_id)
            else:
                self.to_stop.add(job_id)
            job.status, job.finished = "CANCELLED", time.time()
            self._ended(job)
            self.changed.notify_all()
            return job

    def stops(self, hold: float) -> list[str]:
        with self.changed:
            self.changed.wait_for(lambda: self.to_stop, timeout=hold)
            ids, self.to_stop = sorted(self.to_stop), set()
            return ids

    def health(self) -> dict:
        with self.changed:
            states = [job.status for job in self.jobs.values()]
            running = states.count("IN_PROGRESS")
            return {
                "jobs": {
                    **self.counts,
                    "inProgress": running,
                    "inQueue": states.count("IN_QUEUE"),
                },
                "workers": {"idle": 0 if running else 1, "running": 1 if running else 0},
            }

    def _ended(self, job: Job) -> None:
        if self.on_end is not None:
            self.on_end(job)

    def _prune(self) -> None:
        now = time.time()
        for job_id in [
            job.id
            for job in self.jobs.values()
            if job.finished and now - job.finished > KEEP_S["sync" if job.sync else "async"]
        ]:
            del self.jobs[job_id]
            if self.on_forget is not None:
                self.on_forget(job_id)

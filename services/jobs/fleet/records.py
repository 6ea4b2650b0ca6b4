"""A job's record in the fleet's Redis as the pods read and touch it outside the scripts: read
as an `AsyncJob`, a field set on a record that still exists, and a job's end (its quota slot)."""

from __future__ import annotations

import json
from typing import Any

from services.core import tracing
from services.core.config import Settings
from services.core.offload import offload
from services.jobs.async_jobs import AsyncJob
from services.jobs.fleet.state_store import Error, StateStore
from services.jobs.quotas import Quotas
from services.jobs.webhooks import Delivery


class Records:
    def __init__(self, settings: Settings, store: StateStore, quotas: Quotas) -> None:
        self.settings = settings
        self.store = store
        self.names = store.names
        self.quotas = quotas
        self._hset_kept = store.script("hset_kept")

    def read(self, job_id: str) -> dict[str, str]:
        """The record's fields ({} when there is none); StateUnavailable when Redis does not answer."""
        try:
            raw = self.store.redis.hgetall(self.names.job(job_id))
        except Error as exc:
            raise self.store.unavailable(exc) from None
        return {text(k): text(v) for k, v in raw.items()}

    def set_kept(self, job_id: str, name: str, value: str) -> None:
        """Set a field of a record that still exists (an expired one is not made anew, TTL-less)."""
        self._hset_kept(keys=[self.names.job(job_id)], args=[name, value])

    def ended(self, job_id: str) -> None:
        """The job ended: its key's slot, if it took one, is free (services.jobs.quotas)."""
        try:
            key, slotted = self.store.redis.hmget(self.names.job(job_id), "key", "slot")
        except Error as exc:
            self.store.reached(False, exc)  # a take drops the slot once it sees the job ended
            return
        if slotted == b"1":
            self.quotas.give_back(text(key or b"-"), job_id)

    def ttl(self) -> int:
        """How long an ended record is kept (JOB_KEEP_S), in whole seconds."""
        return max(1, int(self.settings.job_keep_s))


def job_of(job_id: str, record: dict[str, str]) -> AsyncJob:
    """The job a record tells of, as the routes answer it."""
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


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))

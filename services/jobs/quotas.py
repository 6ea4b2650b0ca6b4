"""The limits of a named key (services.jobs.access): its jobs running or queued at once, and
what its downloads may write per UTC day. Counted in this process, or with STATE_URL in the
fleet's Redis, so that they hold across pods.

A job takes a slot before its request body is read and gives it back when it ends (an async
job) or is answered (a sync one). A slot whose pod died is given back after JOB_TTL_S at the
latest (in Redis each slot is a member of a sorted set, scored with that deadline).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING

from services.core import errors
from services.core.config import Settings
from services.jobs.access import Key

if TYPE_CHECKING:
    from services.jobs.state_store import StateStore

DAY_S = 86_400

_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class Quotas:
    def __init__(self, settings: Settings, store: StateStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self._slots: dict[str, dict[str, float]] = {}  # key name -> slot -> deadline
        self._bytes: dict[tuple[str, int], int] = {}  # (key name, day) -> bytes written
        self._lock = threading.Lock()
        self._take = store.redis.register_script(_TAKE) if store is not None else None

    def take_job(self, key: Key) -> str | None:
        """A slot for one job of `key` (its id, which an async job takes as its own); None when
        the key has no such limit. Raises QuotaExceeded when all its slots are taken."""
        if key.max_jobs is None:
            return None
        slot, now = str(uuid.uuid4()), time.time()
        until = now + self.settings.job_ttl_s
        if self.store is not None:
            try:
                taken = self._take(
                    keys=[self._slots_key(key.name)],
                    args=[now, key.max_jobs, until, slot, int(self.settings.job_ttl_s * 1000)],
                )
            except self.store.Error as exc:
                raise self.store.unavailable(exc) from None
        else:
            with self._lock:
                slots = {s: d for s, d in self._slots.get(key.name, {}).items() if d > now}
                taken = len(slots) < key.max_jobs
                if taken:
                    slots[slot] = until
                self._slots[key.name] = slots
        if not taken:
            raise errors.QuotaExceeded(
                f"key '{key.name}' has {key.max_jobs} job(s) running or queued, its limit; "
                "send this one when one of them ended",
                retry_after_s=5,
            )
        return slot

    def give_back(self, name: str, slot: str) -> None:
        if self.store is not None:
            try:
                self.store.redis.zrem(self._slots_key(name), slot)
            except self.store.Error as exc:
                self.store.reached(False, exc)  # it frees itself after JOB_TTL_S
            return
        with self._lock:
            self._slots.get(name, {}).pop(slot, None)

    def check_download(self, key: Key) -> None:
        """Raises QuotaExceeded when the key's downloads wrote their daily bytes already."""
        if key.download_bytes_per_day is None:
            return
        written = self._written(key.name)
        if written >= key.download_bytes_per_day:
            day_left = DAY_S - int(time.time()) % DAY_S
            raise errors.QuotaExceeded(
                f"key '{key.name}' downloaded {written} bytes today (UTC), its limit is "
                f"{key.download_bytes_per_day}",
                retry_after_s=day_left,
            )

    def downloaded(self, name: str, size: int) -> None:
        """`size` more bytes written by a download of key `name`."""
        if size <= 0:
            return
        day = int(time.time()) // DAY_S
        if self.store is not None:
            try:
                with self.store.redis.pipeline(transaction=False) as count:
                    count.incrby(self._bytes_key(name, day), size)
                    count.expire(self._bytes_key(name, day), 2 * DAY_S)
                    count.execute()
            except self.store.Error as exc:
                self.store.reached(False, exc)
            return
        with self._lock:
            self._bytes[(name, day)] = self._bytes.get((name, day), 0) + size

    def _written(self, name: str) -> int:
        day = int(time.time()) // DAY_S
        if self.store is None:
            return self._bytes.get((name, day), 0)
        try:
            return int(self.store.redis.get(self._bytes_key(name, day)) or 0)
        except self.store.Error as exc:
            raise self.store.unavailable(exc) from None

    def _slots_key(self, name: str) -> str:
        assert self.store is not None
        return self.store.key("quota", "jobs", name)

    def _bytes_key(self, name: str, day: int) -> str:
        assert self.store is not None
        return self.store.key("quota", "bytes", name, str(day))

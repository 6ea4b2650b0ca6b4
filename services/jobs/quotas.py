"""The limits of a named key (services.jobs.access): its jobs running or queued at once, and
what its downloads may write per UTC day. Counted in this process, or with STATE_URL in the
fleet's Redis, so that they hold across pods.

A job takes a slot before its request body is read and gives it back when it ends (an async
job) or is answered (a sync one): a slot is held as long as its job, whatever its age, by one
holder at a time (`Slot`): the request that took it until a job store keeps it, then that store. In Redis
the slots of a key are a hash, slot -> the pod process that took it; a slot whose holder died is
freed by the liveness that declares its jobs lost, never by a clock: the next take drops the
slots of an async job whose record ended or is gone, and of a sync job whose process no longer
shows it lives (`<prefix>:pod:<name>`, expiring after JOB_CLAIM_TIMEOUT_S; a crashed API process's
goes at once, services.jobs.fleet.release).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.core import errors
from services.core.config import Settings
from services.jobs.access import Key, Keys

if TYPE_CHECKING:
    from services.jobs.fleet.state_store import StateStore

log = logging.getLogger("worker.access")
DAY_S = 86_400


class Slot:
    """One job's place among its key's jobs running or queued (`id` None: the key has no such
    limit). Its holder gives it back once (a second time does nothing); a job store that keeps
    the job `keep`s it, and the request that took it has nothing left to give back."""

    def __init__(self, slot_id: str | None = None, give_back: Callable[[], None] | None = None) -> None:
        self.id = slot_id
        self._give_back = give_back

    def keep(self) -> Slot:
        """The slot, held from now on by the caller (a job store), no longer by this holder."""
        kept, self._give_back = Slot(self.id, self._give_back), None
        return kept

    def give_back(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.give_back()


class Quotas:
    def __init__(self, settings: Settings, store: StateStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.holder = ""  # with a store: the pod process whose proof of life keeps its slots
        self._slots: dict[str, set[str]] = {}  # key name -> its slots
        self._bytes: dict[tuple[str, int], int] = {}  # (key name, day) -> bytes written
        self._lock = threading.Lock()
        self._take = store.script("quota_take") if store is not None else None

    def held_by(self, holder: str) -> None:
        """The slots this process takes live while the pod `holder` shows it lives."""
        self.holder = holder

    def take_job(self, key: Key) -> Slot:
        """A slot for one job of `key` (its id, which an async job takes as its own; none when
        the key has no such limit). Raises QuotaExceeded when all its slots are taken, and
        StateUnavailable when Redis does not answer."""
        if key.max_jobs is None:
            return Slot()
        slot = str(uuid.uuid4())
        if self.store is not None:
            try:
                taken = self._take(
                    keys=[self._slots_key(key.name)],
                    args=[key.max_jobs, slot, self.holder, self.store.names.root],
                )
            except self.store.Error as exc:
                raise self.store.unavailable(exc) from None
        else:
            with self._lock:
                slots = self._slots.setdefault(key.name, set())
                taken = len(slots) < key.max_jobs
                if taken:
                    slots.add(slot)
        if not taken:
            raise errors.QuotaExceeded(
                f"key '{key.name}' has {key.max_jobs} job(s) running or queued, its limit; "
                "send this one when one of them ended",
                retry_after_s=5,
            )
        return Slot(slot, functools.partial(self.give_back, key.name, slot))

    def give_back(self, name: str, slot: str) -> None:
        if self.store is not None:
            try:
                self.store.redis.hdel(self._slots_key(name), slot)
            except self.store.Error as exc:
                self.store.reached(False, exc)  # dropped at a take once its job or holder ended
            return
        with self._lock:
            self._slots.get(name, set()).discard(slot)

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
        return self.store.names.quota_slots(name)

    def _bytes_key(self, name: str, day: int) -> str:
        assert self.store is not None
        return self.store.names.quota_bytes(name, day)


class JobModelLimits:
    """A job's `models` write to the model volume as `/download` does, so they need what it
    needs of the key that sent the job: the `models` scope, and its download bytes of the day,
    which their transfers count against."""

    def __init__(self, keys: Keys, quotas: Quotas) -> None:
        self.keys = keys
        self.quotas = quotas

    def counter(self, name: str) -> Callable[[int], None] | None:
        """What counts the bytes the job's transfers write for key `name` (None: no limit).
        Raises Forbidden without the scope, QuotaExceeded past the day's bytes."""
        key = self.keys.named(name)
        if key is None or "models" not in key.scopes:
            raise errors.Forbidden(
                "this key has no 'models' scope, which a job's `models` need (they write to the model volume)"
            )
        try:
            self.quotas.check_download(key)
        except errors.StateUnavailable:  # as a sync /download does while Redis is down
            log.warning(
                "the download bytes of key %s are not checked for a job's models: the shared state "
                "does not answer",
                key.name,
                extra={"event": "access.unchecked", "key_name": key.name},
            )
        return functools.partial(self.quotas.downloaded, key.name) if key.download_bytes_per_day else None

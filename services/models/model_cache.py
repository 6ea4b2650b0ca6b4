"""On-demand models (a job's `models`, `/download`): their bookkeeping on the volume, and the
size cap MODEL_CACHE_GB.

Every worker sharing the volume must see it, so it lives there, beside the models, in
`<model root>/.cache/`: a record per on-demand file (`records/<key>.json`: type, name, size,
sha256 when known, last use) and a marker per job using a file (`use/<key>.<token>`, refreshed
while the job runs). When a new file would pass the cap, the least recently used recorded files
go first; never one with a fresh marker or a transfer under way, and never a file without a
record (what the operator placed or baked into the image).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass

from services.core import errors
from services.core.config import Settings
from services.core.offload import offload
from services.models import model_store
from services.models.volume_lock import Heartbeat, VolumeLock

log = logging.getLogger("worker.models")
BYTES_PER_GB = 10**9


@dataclass
class Record:
    type: str
    name: str
    size: int
    sha256: str | None
    last_used: float
    state: str = "ready"  # or "downloading": the size is reserved


class Marker:
    """One job's use of one file, on the volume while the job runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "x"):
            pass

    def refresh(self) -> None:
        os.utime(self.path)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)


class ModelCache:
    def __init__(self, settings: Settings) -> None:
        self.model_dir = settings.model_dir
        self.root = os.path.join(settings.model_dir, ".cache")
        self.cap = int(settings.model_cache_gb * BYTES_PER_GB) if settings.model_cache_gb else None
        self.stale_s = settings.model_lock_stale_s
        self.heartbeat = Heartbeat(self.stale_s / 4)
        self.evictions = 0

    # what a job's models go through ----------------------------------------------------------
    def present(self, model_type: str, name: str, sha256: str | None) -> bool:
        """The file is there as recorded (same size; the same hash when one is asked for), or
        the operator placed it there; asks no server. A file without a record whose hash is
        not the one asked for raises `ChecksumMismatch`: it is the operator's, never replaced."""
        path = model_store.target_path(self.model_dir, model_type, name)
        if not os.path.isfile(path):
            return False
        record = self._read(model_type, name)
        if record is None:
            if sha256 is not None and offload(model_store.sha256_of, path) != sha256:
                raise errors.ChecksumMismatch(
                    "a different file of that name is on the volume; it was left as it is"
                )
            return True
        if record.state != "ready" or os.path.getsize(path) != record.size:
            return False
        if sha256 is not None and record.sha256 != sha256:
            if record.sha256 is not None or offload(model_store.sha256_of, path) != sha256:
                return False
            record.sha256 = sha256
        record.last_used = time.time()
        self._write(record)
        return True

    def use(self, model_type: str, name: str) -> Marker:
        """Mark the file in use (before it is looked at: an eviction from now on skips it)."""
        folder = os.path.join(self.root, "use")
        os.makedirs(folder, exist_ok=True)
        marker = Marker(os.path.join(folder, f"{_key(model_type, name)}.{uuid.uuid4().hex}"))
        self.heartbeat.add(marker)
        return marker

    def release(self, marker: Marker) -> None:
        self.heartbeat.discard(marker)
        marker.release()

    # what a transfer goes through -----------------------------------------------------------
    def reserve(self, model_type: str, name: str, size: int, deadline: float) -> None:
        """Room for `size` more bytes under the cap, evicting the least recently used files no
        job uses; the reservation is a record in state `downloading`."""
        if self.cap is not None and size > self.cap:
            raise errors.ModelCacheFull(f"the file is {size} bytes, the cap is {self.cap} (MODEL_CACHE_GB)")
        if self.cap is None:
            self._write(Record(model_type, name, size, None, time.time(), "downloading"))
            return
        lock = VolumeLock(os.path.join(self._folder("records"), ".evict.lock"), self.stale_s)
        if not lock.acquire(deadline):
            raise errors.ModelCacheFull(
                "another worker held the cache's eviction lock past the fetch timeout"
            )
        try:
            records = [r for r in self._records() if (r.type, r.name) != (model_type, name)]
            used = sum(r.size for r in records)
            for record in sorted(records, key=lambda r: r.last_used):
                if used + size <= self.cap:
                    break
                if self._evictable(record):
                    self._evict(record)
                    used -= record.size
            if used + size > self.cap:
                raise errors.ModelCacheFull(
                    f"{size} bytes do not fit under the cap of {self.cap} (MODEL_CACHE_GB): "
                    f"{used} bytes are held by files in use or being fetched"
                )
            self._write(Record(model_type, name, size, None, time.time(), "downloading"))
        finally:
            lock.release()

    def recorded(self, model_type: str, name: str, sha256: str | None) -> None:
        """A transfer ended: the file is on-demand, used now."""
        path = model_store.target_path(self.model_dir, model_type, name)
        self._write(Record(model_type, name, os.path.getsize(path), sha256, time.time()))

    def forget(self, model_type: str, name: str) -> None:
        """A transfer failed: its reservation goes (its partial file stays, to be resumed)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._record_path(model_type, name))

    # what /models/ls shows --------------------------------------------------------------------
    def annotate(self, listing: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """`cached` (an on-demand file) and its `last_used` on every listed file."""
        records = {(r.type, r.name): r for r in self._records() if r.state == "ready"}
        for model_type, entries in listing.items():
            for entry in entries:
                record = records.get((model_type, entry["name"]))
                entry["cached"] = record is not None
                entry["last_used"] = int(record.last_used) if record else None
        return listing

    # the records ------------------------------------------------------------------------------
    def _evictable(self, record: Record) -> bool:
        path = model_store.target_path(self.model_dir, record.type, record.name)
        if self._fresh(model_store.lock_path(path)):
            return False  # a transfer of it is under way
        prefix = _key(record.type, record.name) + "."
        folder = self._folder("use")
        return not any(
            self._fresh(os.path.join(folder, e)) for e in os.listdir(folder) if e.startswith(prefix)
        )

    def _fresh(self, path: str) -> bool:
        """A lock or marker its holder refreshed within the stale time; a stale marker (its
        worker died) is removed on the way."""
        try:
            fresh = time.time() - os.stat(path).st_mtime < self.stale_s
        except FileNotFoundError:
            return False
        if not fresh and os.path.dirname(path) == os.path.join(self.root, "use"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return fresh

    def _evict(self, record: Record) -> None:
        path = model_store.target_path(self.model_dir, record.type, record.name)
        for leftover in (path, model_store.partial_path(path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        self.forget(record.type, record.name)
        self.evictions += 1
        log.info("evicted a cached %s model (%d bytes), the least recently used", record.type, record.size)

    def _records(self) -> list[Record]:
        folder = self._folder("records")
        found = [_load(os.path.join(folder, e)) for e in os.listdir(folder) if e.endswith(".json")]
        return [record for record in found if record is not None]

    def _read(self, model_type: str, name: str) -> Record | None:
        return _load(self._record_path(model_type, name))

    def _write(self, record: Record) -> None:
        path = self._record_path(record.type, record.name)
        temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(asdict(record), handle)
        os.replace(temporary, path)

    def _record_path(self, model_type: str, name: str) -> str:
        return os.path.join(self._folder("records"), _key(model_type, name) + ".json")

    def _folder(self, kind: str) -> str:
        folder = os.path.join(self.root, kind)
        os.makedirs(folder, exist_ok=True)
        return folder


def _load(path: str) -> Record | None:
    """A record, or None when it is gone (evicted meanwhile) or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            return Record(**json.load(handle))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _key(model_type: str, name: str) -> str:
    return hashlib.sha256(f"{model_type}/{name}".encode()).hexdigest()[:32]

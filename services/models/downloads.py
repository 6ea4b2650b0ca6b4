"""Model downloads into the volume: whole or absent, resumable, verified, deduplicated.

Each item is planned first (services.models.download_plan); its bytes are transferred by
services.models.transfer (a hidden `.part` file, resumed, checked, fsynced and renamed into
place). One file has one transfer at a time across every process and machine
sharing the volume: it runs under a lock file beside the target (services.models.volume_lock); the
others wait and then use the file, or take over a dead holder's partial file. What a transfer
brings is on-demand, counted against MODEL_CACHE_GB (services.models.model_cache). `/download` runs
transfers in the background (a greenlet in the API); a job's models run them in the job's
thread (services.models.job_models). Hashing and fsync run off the gevent hub.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.core import background, errors, tracing
from services.core.config import Settings
from services.core.in_hand import InHand
from services.models import download_plan, model_store
from services.models.download_plan import Download
from services.models.model_cache import ModelCache
from services.models.transfer import Received, TookTooLong, Transfer
from services.models.volume_lock import VolumeLock

log = logging.getLogger("worker.downloads")

FOREVER_S = 10 * 365 * 24 * 3600.0
KEEP_S = 24 * 3600
ACTIVE = ("queued", "running")


class DownloadObserver(Received, Protocol):
    """What the pod API's metrics learn of downloads (services.jobs.metrics)."""

    def download_failed(self, code: str) -> None: ...


class Downloads:
    def __init__(
        self,
        settings: Settings,
        observer: DownloadObserver | None = None,
        cache: ModelCache | None = None,
        in_hand: InHand | None = None,
    ) -> None:
        """`in_hand`: where a `/download` running in the background is held for a drain."""
        self.settings = settings
        self.observer = observer
        self.in_hand = in_hand
        self.cache = cache or ModelCache(settings)
        self.transfer = Transfer(settings, self.cache, observer)
        self.by_id: dict[str, Download] = {}
        self.active: dict[str, Download] = {}  # target path -> running transfer
        self.lock = threading.Lock()

    # --- requests ------------------------------------------------------------------------------
    def submit(
        self,
        items: Any,
        trace: Mapping[str, str] | None = None,
        counted: Callable[[int], None] | None = None,
    ) -> list[Download]:
        """Check every item first (nothing starts when one is bad), then start or join transfers,
        each traced as a `download` span continuing `trace`; `counted` is told the size of each
        chunk a transfer started here receives (a key's daily quota)."""
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise errors.InvalidRequest(
                "send a list of downloads: [{type, url | repo_id+filename, filename?, sha256?}]"
            )
        planned = [self.plan(index, item) for index, item in enumerate(items)]
        started = []
        with self.lock:
            self._prune()
            for download in planned:
                running = self.active.get(download.path)
                if running is not None:
                    started.append(running)
                    continue
                self.active[download.path] = download
                self.by_id[download.id] = download
                download.trace = tracing.submitted(trace, **{"download.id": download.id})
                download.counted = counted
                held = self.in_hand.hold("download") if self.in_hand else contextlib.nullcontext()
                background.start("download", self._run, download, held)
                started.append(download)
        return started

    def get(self, download_id: str) -> Download:
        download = self.by_id.get(download_id)
        if download is None:
            raise errors.DownloadNotFound("no such download (finished ones are kept for a day)")
        return download

    def all(self) -> list[Download]:
        return list(self.by_id.values())

    def plan(self, index: int, item: Any) -> Download:
        """One item of `/download` or of a job's `models`, checked; nothing is fetched yet."""
        return download_plan.plan(self.settings, index, item)

    # --- the transfer --------------------------------------------------------------------------
    def fetch(
        self,
        download: Download,
        present: Callable[[], bool],
        deadline: float | None = None,
        stop: Callable[[], None] | None = None,
        private: bool = False,
    ) -> str:
        """The file on the volume, "exists" or "done": under the lock beside it, `present()` is
        asked first (again, once a transfer by another worker ended), then it is transferred.
        `deadline` (monotonic) bounds waiting and transfer alike; `stop` raises to give up.
        `private` (an encrypted job's model): its span names neither the type nor the size,
        which would fingerprint the job's content."""
        described = {} if private else {"download.type": download.type}
        with tracing.span("download", download.trace, **{"download.id": download.id, **described}) as span:
            state = self._fetch(download, present, deadline, stop)
            span.set(
                **{"download.state": state, **({} if private else {"download.bytes": download.bytes_done})}
            )
            return state

    def _fetch(
        self,
        download: Download,
        present: Callable[[], bool],
        deadline: float | None,
        stop: Callable[[], None] | None,
    ) -> str:
        deadline = time.monotonic() + FOREVER_S if deadline is None else deadline
        os.makedirs(os.path.dirname(download.path), exist_ok=True)
        lock = VolumeLock(model_store.lock_path(download.path), self.settings.model_lock_stale_s)
        if not lock.acquire(deadline, stop):
            raise TookTooLong("another worker's transfer of it did not end in time")
        self.cache.heartbeat.add(lock)
        try:
            if present():
                return "exists"
            self.transfer.run(download, lock, deadline, stop)
            return "done"
        finally:
            self.cache.heartbeat.discard(lock)
            lock.release()

    def _run(self, download: Download, held: contextlib.AbstractContextManager) -> None:
        with held:
            self._transfer_once(download)

    def _transfer_once(self, download: Download) -> None:
        download.state = "running"
        try:
            download.state = self.fetch(
                download, lambda: os.path.isfile(download.path) and self.transfer.already_there(download)
            )
            log.info(
                "download %s %s",
                download.id,
                download.state,
                extra={"event": f"download.{download.state}", "download_id": download.id},
            )
        except errors.WorkerError as exc:
            download.state, download.error = "failed", exc.message
            log.info(
                "download %s failed: %s",
                download.id,
                exc.code,
                extra={"event": "download.failed", "download_id": download.id},
            )
            self._failed(exc.code)
        except OSError as exc:
            download.state, download.error = (
                "failed",
                f"download_failed: {type(exc).__name__} writing the file",
            )
            log.info(
                "download %s failed: %s",
                download.id,
                type(exc).__name__,
                extra={"event": "download.failed", "download_id": download.id},
            )
            self._failed(errors.DownloadFailed.code)
        except Exception as exc:  # a bug: the download fails with a code instead of running forever
            download.state, download.error = "failed", errors.WorkerError("unexpected worker error").message
            background.log_unexpected(log, f"download {download.id}", exc)
            self._failed(errors.WorkerError.code)
        finally:
            download.finished = time.time()
            with self.lock:
                self.active.pop(download.path, None)
            download.ended.set()

    def _failed(self, code: str) -> None:
        if self.observer is not None:
            self.observer.download_failed(code)

    def _prune(self) -> None:
        now = time.time()
        for download_id in [d.id for d in self.by_id.values() if d.finished and now - d.finished > KEEP_S]:
            del self.by_id[download_id]

"""A job's `models`: each made sure of on the volume before its workflow runs, in both modes.

An item already there (as the cache recorded it, or placed by the operator) costs no request;
a missing one is fetched through the downloads machinery (SSRF guard, tokens only to their
hosts, resumable `.part`, size and sha256, fsync and rename), one transfer per file across the
workers sharing the volume. Transfers count against MODEL_FETCH_TIMEOUT_S, not the workflow's
timeout. Errors name the item's index and why, never its URL or host (inside an envelope the
URL is as private as the workflow).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from services.core import background, errors
from services.core.config import Settings
from services.core.job_spec import Cancel, Progress
from services.core.offload import offload
from services.models.download_plan import Download
from services.models.downloads import Downloads
from services.models.model_cache import Marker
from services.models.transfer import TookTooLong

PROGRESS_S = 0.5  # how often a transfer's bytes are reported


class JobModels:
    def __init__(self, settings: Settings, downloads: Downloads) -> None:
        self.settings = settings
        self.downloads = downloads
        self.cache = downloads.cache
        self.hits = 0  # found on the volume, no transfer
        self.transfers = 0

    def ensure(
        self,
        items: tuple[dict, ...],
        progress: Progress | None,
        cancel: Cancel | None,
        counted: Callable[[int], None] | None = None,
        private: bool = False,
    ) -> list[Marker]:
        """Every item on the volume, each marked in use; `release` the markers once the job ended.
        `counted` is told the size of each chunk a transfer writes (the key's daily bytes);
        `private`: an encrypted job's, whose transfers' spans say nothing of what they fetch."""
        planned = [self._plan(index, item) for index, item in enumerate(items)]
        for download in planned:
            download.counted = counted
        deadline = time.monotonic() + self.settings.model_fetch_timeout_s
        markers: list[Marker] = []
        try:
            for index, download in enumerate(planned):
                markers.append(offload(self.cache.use, download.type, download.name))
                self._ensure(index, download, deadline, progress, cancel, private)
        except BaseException:
            self.release(markers)
            raise
        return markers

    def release(self, markers: list[Marker]) -> None:
        for marker in markers:
            offload(self.cache.release, marker)

    def _plan(self, index: int, item: Any) -> Download:
        try:
            return self.downloads.plan(index, item)
        except errors.WorkerError as exc:
            raise self._reason(index, exc) from None

    def _ensure(
        self,
        index: int,
        download: Download,
        deadline: float,
        progress: Progress | None,
        cancel: Cancel | None,
        private: bool,
    ) -> None:
        def present() -> bool:  # file system calls, off the hub: a network volume may be slow
            return offload(self.cache.present, download.type, download.name, download.sha256)

        def stop() -> None:
            if cancel is not None and cancel.is_set():
                raise cancel.error

        try:
            if present():
                self.hits += 1
                return
            with _Reporter(index, download, progress):
                state = self.downloads.fetch(download, present, deadline, stop, private)
        except errors.WorkerError as exc:
            raise self._reason(index, exc) from None
        except OSError as exc:
            raise errors.ModelFetchFailed(
                f"models[{index}]: could not write the file ({type(exc).__name__})"
            ) from None
        if state == "exists":  # another worker fetched it meanwhile
            self.hits += 1
        else:
            self.transfers += 1

    def _reason(self, index: int, exc: errors.WorkerError) -> errors.WorkerError:
        """The error to answer with, naming the item by index only."""
        where = f"models[{index}]"
        if isinstance(exc, errors.Interrupted):
            return exc
        kept = (errors.InvalidRequest, errors.InvalidTarget, errors.ModelCacheFull, errors.InsufficientSpace)
        if isinstance(exc, kept):
            return type(exc)(f"{where}: {exc.detail}")
        if isinstance(exc, TookTooLong):
            why = f"took longer than {self.settings.model_fetch_timeout_s:g} s (MODEL_FETCH_TIMEOUT_S)"
        elif isinstance(exc, errors.ChecksumMismatch):
            why = f"checksum mismatch: {exc.detail}"
        elif isinstance(exc, errors.UrlNotAllowed):
            why = (
                "could not be reached (its host does not resolve)"
                if exc.detail.startswith("cannot resolve")
                else "not allowed (not an http(s) URL of a public address; ALLOW_PRIVATE_DOWNLOADS)"
            )
        elif isinstance(exc, errors.DownloadFailed):
            why = "could not be reached" if exc.detail.startswith("could not connect") else exc.detail
        else:
            why = exc.code
        return errors.ModelFetchFailed(f"{where}: {why}")


class _Reporter:
    """Reports a transfer's bytes as progress every PROGRESS_S while it runs."""

    def __init__(self, index: int, download: Download, progress: Progress | None) -> None:
        self.index = index
        self.download = download
        self.progress = progress
        self.done = threading.Event()

    def __enter__(self) -> _Reporter:
        if self.progress is not None:
            background.start("model-progress", self._loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()

    def _loop(self) -> None:
        while not self.done.wait(PROGRESS_S):
            if self.download.bytes_done and self.progress is not None:
                self.progress(
                    {
                        "state": "downloading",
                        "model": self.index,
                        "value": self.download.bytes_done,
                        "max": self.download.total or 0,
                    }
                )

"""Model downloads into the volume: whole or absent, resumable, verified, deduplicated.

Each transfer writes a hidden `.part` file in the target's folder, resumes it with a Range
request after a dropped connection or a killed worker, checks size and sha256, fsyncs and
renames it into place. One file has one transfer at a time across every process and machine
sharing the volume: it runs under a lock file beside the target (services.models.volume_lock); the
others wait and then use the file, or take over a dead holder's partial file. What a transfer
brings is on-demand, counted against MODEL_CACHE_GB (services.models.model_cache). `/download` runs
transfers in the background (a greenlet in the API); a job's models run them in the job's
thread (services.models.job_models). Hashing and fsync run off the gevent hub.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.core import background, errors, tracing
from services.core.config import Settings
from services.core.in_hand import InHand
from services.core.offload import offload, start
from services.models import model_store, url_guard
from services.models.model_cache import ModelCache
from services.models.volume_lock import VolumeLock

log = logging.getLogger("worker.downloads")

CHUNK = (
    model_store.CHUNK
)  # per read; a dropped connection costs at most this (urllib3 drops a half-read chunk)
FOREVER_S = 10 * 365 * 24 * 3600.0
ATTEMPTS = 4  # one transfer plus three resumes after dropped connections
KEEP_S = 24 * 3600
ACTIVE = ("queued", "running")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class Source:
    url: str
    headers: dict[str, str]
    label: str  # what the status shows: never a token


@dataclass
class Download:
    type: str
    name: str
    path: str
    source: Source
    sha256: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # queued -> running -> done | exists | failed
    bytes_done: int = 0
    total: int | None = None
    rate: float = 0.0
    error: str | None = None
    finished: float | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    trace: dict = field(default_factory=dict, repr=False)  # its submission's span (/download)
    counted: Callable[[int], None] | None = field(default=None, repr=False)  # told each chunk's size

    def view(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "filename": self.name,
            "source": self.source.label,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "total": self.total,
            "rate_bytes_s": round(self.rate),
            "error": self.error,
            **({"trace_id": tracing.trace_id_of(self.trace)} if self.trace else {}),
        }


class DownloadObserver(Protocol):
    """What the pod API's metrics learn of downloads (services.jobs.metrics)."""

    def received(self, size: int) -> None: ...

    def download_failed(self, code: str) -> None: ...


class TookTooLong(errors.DownloadFailed):
    """The transfer (or the wait for another worker's) passed its deadline."""


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
        if not isinstance(item, dict):
            raise errors.InvalidRequest(f"item {index} must be an object")
        model_type = model_store.check_type(item.get("type"))
        sha256 = item.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
            raise errors.InvalidRequest(f"item {index}: sha256 must be 64 hex digits")
        if "url" in item:
            source, name = self._url_source(item["url"])
            name = item.get("filename") or name
        elif "repo_id" in item:
            source, name = self._hf_source(item)
        else:
            raise errors.InvalidRequest(f"item {index} needs 'url', or 'repo_id' and 'filename'")
        name = item.get("target") or name
        path = model_store.target_path(self.settings.model_dir, model_type, name)
        return Download(
            type=model_type, name=name, path=path, source=source, sha256=sha256.lower() if sha256 else None
        )

    def _url_source(self, url: Any) -> tuple[Source, str]:
        try:
            parts = url_guard.split(url)
        except errors.UrlNotAllowed:
            raise errors.UrlNotAllowed("'url' must be a well-formed http(s) URL with a host") from None
        url_guard.resolve(parts.hostname, url_guard.port_of(parts), self.settings.allow_private_downloads)
        headers = {}
        if self.settings.civitai_token and _within(parts.hostname, "civitai.com"):
            headers["Authorization"] = f"Bearer {self.settings.civitai_token}"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = f":{parts.port}" if parts.port else ""
        label = f"{parts.scheme}://{host}{port}{parts.path}"  # no user:password@, no query: they hold secrets
        return Source(url, headers, label), os.path.basename(parts.path) or "download"

    def _hf_source(self, item: dict) -> tuple[Source, str]:
        repo_id, filename, revision = item.get("repo_id"), item.get("filename"), item.get("revision")
        if not isinstance(repo_id, str) or not isinstance(filename, str) or not repo_id or not filename:
            raise errors.InvalidRequest("a Hugging Face download needs 'repo_id' and 'filename' strings")
        if revision is not None and not isinstance(revision, str):
            raise errors.InvalidRequest("'revision' must be a string")
        from huggingface_hub import hf_hub_url  # here: at start-up it costs the API ~30 ms and MBs

        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=self.settings.hf_endpoint)
        headers = {"Authorization": f"Bearer {self.settings.hf_token}"} if self.settings.hf_token else {}
        label = f"hf://{repo_id}/{filename}" + (f"@{revision}" if revision else "")
        return Source(url, headers, label), os.path.basename(filename)

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
            self._transfer(download, lock, deadline, stop)
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
                download, lambda: os.path.isfile(download.path) and self._already_there(download)
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

    def _transfer(
        self, download: Download, lock: VolumeLock, deadline: float, stop: Callable[[], None] | None
    ) -> None:
        partial = model_store.partial_path(download.path)
        reservation = _Reservation(self.cache, download, deadline)
        try:
            digest = self._receive_whole(download, partial, reservation, lambda: _check(lock, deadline, stop))
            reservation.take()  # a partial left complete by a dead worker counts against the cap too
            self._finish(download, partial, digest)
        except BaseException:
            reservation.give_back()
            raise
        self.cache.recorded(download.type, download.name, download.sha256)

    def _receive_whole(
        self, download: Download, partial: str, reservation: _Reservation, check: Callable[[], None]
    ) -> str | None:
        """The whole body into the partial file, resuming a dropped connection; its sha256 when
        one is expected and it was computed on the way."""
        for _ in range(ATTEMPTS):
            complete, digest = self._attempt(download, partial, reservation, check)
            if complete:
                return digest
            log.info("download %s: connection dropped, resuming", download.id)
        raise errors.DownloadFailed("the connection kept dropping; ask again to resume from the partial file")

    def _attempt(
        self, download: Download, partial: str, reservation: _Reservation, check: Callable[[], None]
    ) -> tuple[bool, str | None]:
        """One request for what the partial file lacks."""
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        headers = {**download.source.headers, "Accept-Encoding": "identity"}  # the file's own bytes
        if have:
            headers["Range"] = f"bytes={have}-"
        response = url_guard.get(download.source.url, headers, self.settings.allow_private_downloads)
        try:
            if response.status_code == 416 and have:  # the partial is complete, or stale
                download.total = _total_of(response, None)
                if download.total == have:
                    return True, None
                os.remove(partial)
                return False, None
            if response.status_code not in (200, 206):
                raise errors.DownloadFailed(f"the server answered HTTP {response.status_code}")
            offset = have if response.status_code == 206 else 0
            download.total = _total_of(response, offset)
            reservation.take()
            self._check_space(download, offset)
            return self._receive(download, response, partial, offset, reservation.deadline, check)
        finally:
            response.close()

    def _already_there(self, download: Download) -> bool:
        """The final file matches the remote size (asked for with a one-byte Range) and hash."""
        headers = {**download.source.headers, "Range": "bytes=0-0"}
        probe = url_guard.get(download.source.url, headers, self.settings.allow_private_downloads)
        probe.close()
        if probe.status_code not in (200, 206):
            return False
        download.total = _total_of(probe, 0)
        if download.total is None or os.path.getsize(download.path) != download.total:
            return False
        return download.sha256 is None or offload(model_store.sha256_of, download.path) == download.sha256

    def _check_space(self, download: Download, have: int) -> None:
        if download.total is None:
            return
        free = shutil.disk_usage(os.path.dirname(download.path)).free
        if download.total - have > free:
            raise errors.InsufficientSpace(f"{download.total - have} bytes needed, {free} free")

    def _receive(
        self,
        download: Download,
        response: Any,
        partial: str,
        offset: int,
        deadline: float,
        check: Callable[[], None],
    ) -> tuple[bool, str | None]:
        """Append the body to the partial file, hashing as it goes. A chunk is written on one
        pool thread and hashed on another while the hub reads the next one. Returns whether the
        body came whole and, when a sha256 is expected, that of the whole partial file. `check`
        raises to stop (the deadline passed, the lock was lost, a cancel); the connection is
        closed at the deadline (a server that trickles never ends a chunk)."""
        started, received = time.monotonic(), 0
        download.bytes_done = offset
        digest = hashlib.sha256() if download.sha256 is not None else None
        if digest is not None and offset:
            offload(model_store.hash_into, digest, partial)
        chunks = _pieces(response)
        cutoff = threading.Timer(max(deadline - time.monotonic(), 0), response.close)
        cutoff.daemon = True
        cutoff.start()
        try:
            with open(partial, "ab" if offset else "wb") as handle:
                sink = _Sink(handle)
                pending: list = []
                while True:
                    try:
                        chunk = next(chunks, None)
                    except Exception as exc:  # requests/urllib3 errors of a dropped connection
                        _wait(pending)
                        check()
                        log.info("download %s: %s after %d bytes", download.id, type(exc).__name__, received)
                        return False, None
                    _wait(pending)  # a failed write raises its OSError here
                    check()
                    if chunk is None:
                        break
                    pending = [start(sink.write, chunk)] + ([start(digest.update, chunk)] if digest else [])
                    received += len(chunk)
                    if self.observer is not None:
                        self.observer.received(len(chunk))
                    if download.counted is not None:
                        download.counted(len(chunk))
                    download.bytes_done = offset + received
                    download.rate = received / max(time.monotonic() - started, 1e-6)
                    if download.total is not None and download.bytes_done > download.total:
                        _wait(pending)
                        handle.close()
                        os.remove(partial)
                        raise errors.DownloadFailed("the server sent more bytes than it announced")
        finally:
            cutoff.cancel()
        complete = download.total is None or download.bytes_done == download.total
        return complete, digest.hexdigest() if digest is not None and complete else None

    def _finish(self, download: Download, partial: str, digest: str | None) -> None:
        if download.sha256 is not None:
            digest = digest or offload(model_store.sha256_of, partial)
            if digest != download.sha256:
                os.remove(partial)
                raise errors.ChecksumMismatch(
                    f"expected sha256 {download.sha256}, got {digest}; the file was removed"
                )
        offload(_fsync, partial, True)
        os.replace(partial, download.path)
        offload(_fsync, os.path.dirname(download.path))
        download.bytes_done = os.path.getsize(download.path)

    def _failed(self, code: str) -> None:
        if self.observer is not None:
            self.observer.download_failed(code)

    def _prune(self) -> None:
        now = time.time()
        for download_id in [d.id for d in self.by_id.values() if d.finished and now - d.finished > KEEP_S]:
            del self.by_id[download_id]


class _Reservation:
    """The size a transfer holds against MODEL_CACHE_GB: taken once its size is known, given
    back when the transfer fails."""

    def __init__(self, cache: ModelCache, download: Download, deadline: float) -> None:
        self.cache = cache
        self.download = download
        self.deadline = deadline
        self.taken = False

    def take(self) -> None:
        if not self.taken:
            self.cache.reserve(
                self.download.type, self.download.name, self.download.total or 0, self.deadline
            )
            self.taken = True

    def give_back(self) -> None:
        if self.taken:
            self.cache.forget(self.download.type, self.download.name)


def _check(lock: VolumeLock, deadline: float, stop: Callable[[], None] | None) -> None:
    if stop is not None:
        stop()
    if not lock.held:
        raise errors.DownloadFailed("another worker took the transfer over (this one was silent too long)")
    if time.monotonic() >= deadline:
        raise TookTooLong("the transfer did not end in time")


def _total_of(response: Any, offset: int | None) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and offset is not None:
        return offset + int(length)
    return None


def _pieces(response: Any) -> Iterator[Any]:
    """The body in pieces of up to CHUNK. Read straight into two buffers taken in turn (1 GiB in
    fresh 1 MiB bytes objects costs a page fault per page, a third of the transfer's time); a
    piece is still being written and hashed while the next is read into the other buffer, and
    the caller waits for that before asking for another. A body the server encoded anyway goes
    through requests, which decodes it."""
    reader = getattr(response.raw, "_fp", None)  # http.client's response under urllib3's
    if response.headers.get("Content-Encoding", "identity") != "identity" or not hasattr(reader, "readinto"):
        yield from response.iter_content(CHUNK)
        return
    buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    turn = 0
    while count := reader.readinto(buffers[turn]):
        yield buffers[turn][:count]
        turn ^= 1


class _Sink:
    """Appends to the partial file and keeps the page cache of a transfer to two windows: each
    full window is handed to the disk (sync_file_range starts its writeback), the one before
    it is waited for and dropped from the cache. So a 20 GB model neither fills the page cache
    nor leaves gigabytes dirty for the fsync before the rename, and the disk is kept busy
    while the network fills the next window."""

    WINDOW = 32 * 1024 * 1024

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.begun = handle.tell()  # the start of the window being filled
        self.in_flight: tuple[int, int] | None = None  # the window being written to disk

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        end = self.handle.tell()
        if end - self.begun < self.WINDOW:
            return
        self.handle.flush()
        fd = self.handle.fileno()
        _sync_range(fd, self.begun, end - self.begun, _START_WRITE)
        if self.in_flight is not None:
            _sync_range(fd, *self.in_flight, _WAIT_BEFORE | _START_WRITE | _WAIT_AFTER)
            os.posix_fadvise(fd, *self.in_flight, os.POSIX_FADV_DONTNEED)  # clean now: dropped
        self.in_flight = (self.begun, end - self.begun)
        self.begun = end


_WAIT_BEFORE, _START_WRITE, _WAIT_AFTER = 1, 2, 4  # linux/fs.h SYNC_FILE_RANGE_*
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


def _sync_range(fd: int, offset: int, length: int, flags: int) -> None:
    """Linux's sync_file_range(2), which os does not offer: writeback of one range only."""
    if _libc.sync_file_range(fd, offset, length, flags) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _wait(pending: list) -> None:
    for result in pending:
        result()


def _fsync(path: str, drop: bool = False) -> None:
    """`drop`: the file's pages leave the page cache once they are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _within(host: str, domain: str) -> bool:
    """`host` is `domain` or one of its subdomains (never merely a name ending in it)."""
    host = host.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)

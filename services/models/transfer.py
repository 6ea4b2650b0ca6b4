"""The bytes of one download onto the volume, under the lock its caller holds: a hidden `.part`
file in the target's folder, resumed with a Range request after a dropped connection or a killed
worker, counted against MODEL_CACHE_GB while it grows, checked for size and sha256, fsynced and
renamed into place. Writing and hashing run off the gevent hub while the next piece is read."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from services.core import errors
from services.core.config import Settings
from services.core.offload import offload, start
from services.models import model_store, url_guard
from services.models.download_plan import Download
from services.models.model_cache import ModelCache
from services.models.volume_lock import VolumeLock

log = logging.getLogger("worker.downloads")

CHUNK = (
    model_store.CHUNK
)  # per read; a dropped connection costs at most this (urllib3 drops a half-read chunk)
ATTEMPTS = 4  # one transfer plus three resumes after dropped connections


class Received(Protocol):
    """What is told of the bytes received (the metrics: services.jobs.metrics)."""

    def received(self, size: int) -> None: ...


class TookTooLong(errors.DownloadFailed):
    """The transfer (or the wait for another worker's) passed its deadline."""


class Transfer:
    def __init__(self, settings: Settings, cache: ModelCache, observer: Received | None) -> None:
        self.settings = settings
        self.cache = cache
        self.observer = observer

    def run(
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

    def already_there(self, download: Download) -> bool:
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
                sink = Sink(handle)
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


class Sink:
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

"""A lock on the model volume that holds across processes and machines sharing it.

`flock` and `fcntl` locks may be ignored by network filesystems, so the lock is a file created
with O_EXCL (atomic on NFS v3+, SMB and FUSE volumes alike) holding the holder's token. The
holder refreshes its mtime (`refresh`, a heartbeat); a waiter that sees the lock file unchanged
for MODEL_LOCK_STALE_S by its own clock (so clock skew between machines does not matter) moves
it aside, which only one waiter can do, and takes the lock. A holder on the waiter's own machine
and PID namespace is known at once to be gone when its process is (the token names the boot,
the namespace, the pid and the process's start time), so a restarted worker resumes without
waiting out the stale time. A holder that finds its token gone has lost the lock and must stop
writing.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable

from services.core import background

POLL_S = 0.2


def _process_identity(pid: int | str) -> str | None:
    """`boot/pid-namespace/pid/start-time` of a process on this machine, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            started = handle.read().rsplit(")", 1)[1].split()[19]
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except (OSError, IndexError):
        return None
    return f"{boot}/{namespace}/{os.getpid() if pid == 'self' else pid}/{started}"


_PROCESS = _process_identity("self") or "unknown"


def _gone(token: str | None) -> bool:
    """The token's holder ran on this machine, in this PID namespace, and has exited."""
    if not token or token.count("/") != 4 or _PROCESS == "unknown":
        return False
    boot, namespace, pid, started, _ = token.split("/")
    mine_boot, mine_namespace, _, _ = _PROCESS.split("/")
    if (boot, namespace) != (mine_boot, mine_namespace) or not pid.isdigit():
        return False
    return _process_identity(int(pid)) != f"{boot}/{namespace}/{pid}/{started}"


class LockLost(RuntimeError):
    """Another worker took over the lock: this one went silent for longer than the stale time."""


class VolumeLock:
    def __init__(self, path: str, stale_s: float) -> None:
        self.path = path
        self.stale_s = stale_s
        self.token = f"{_PROCESS}/{uuid.uuid4().hex}"
        self.held = False

    def acquire(self, deadline: float, stop: Callable[[], None] | None = None) -> bool:
        """Take the lock, waiting for its holder; False when `deadline` (monotonic) passed first.
        Returns True at once when the lock was free; `stop` is called while waiting (it raises
        to give up, on a cancel)."""
        seen: tuple[int, int] | None = None
        since = time.monotonic()
        while True:
            if self._create():
                return True
            state = self._state()
            if state is not None and _gone(self._token()):
                self._move_aside()
                continue
            if state != seen:
                seen, since = state, time.monotonic()
            elif state is not None and time.monotonic() - since >= self.stale_s:
                self._move_aside()
                seen = None
                continue
            if time.monotonic() >= deadline:
                return False
            if stop is not None:
                stop()
            time.sleep(POLL_S)

    def refresh(self) -> None:
        """The heartbeat; raises `LockLost` when the lock is no longer this holder's."""
        if not self.held:
            return
        if self._token() != self.token:
            self.held = False
            raise LockLost(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def release(self) -> None:
        if self.held and self._token() == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.token.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.held = True
        return True

    def _state(self) -> tuple[int, int] | None:
        """What a heartbeat changes: the lock file's inode and mtime."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _token(self) -> str | None:
        try:
            with open(self.path, encoding="ascii", errors="replace") as handle:
                return handle.read().strip()
        except FileNotFoundError:
            return None

    def _move_aside(self) -> None:
        """Rename the stale lock away (one waiter's rename wins) and delete it."""
        aside = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        with contextlib.suppress(FileNotFoundError):
            os.remove(aside)


class Heartbeat:
    """Refreshes what this process holds on the volume (locks, markers of use) from one thread,
    `interval` apart; a lock found lost is dropped (its holder sees `held` turn False)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._items: set = set()
        # started here, where it is made (the API's hub): a thread started from a pool thread
        # under gevent would be a greenlet of that thread's hub, which never runs it
        background.start("volume-heartbeat", self._loop)

    def add(self, item: object) -> None:
        self._items.add(item)

    def discard(self, item: object) -> None:
        self._items.discard(item)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            for item in list(self._items):
                try:
                    item.refresh()
                except (LockLost, OSError):
                    self._items.discard(item)

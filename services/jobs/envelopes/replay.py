"""Replay protection for envelopes: a sealed request runs once.

An `(epk, nonce)` pair seen within the window is refused, and a plaintext that carries `ts`
(Unix seconds) outside the window is refused, so a recorded request cannot be sent again
later either. Without STATE_URL the memory is the process's own: a restarted worker forgets
what it saw, and a second worker never saw it. With STATE_URL every worker of the fleet also
remembers the pair in Redis for the window, so a replay to any of them is refused; while Redis
does not answer, each worker falls back on its own memory. A client that needs more puts `ts`
into every request (the bundled client does), which bounds a replay to the window whatever the
workers remember.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from services.core import errors

if TYPE_CHECKING:  # redis is imported only by workers that set STATE_URL
    from services.jobs.fleet.state_store import StateStore

log = logging.getLogger("worker.replay")


class ReplayGuard:
    def __init__(self, window_s: float, shared: StateStore | None = None) -> None:
        self.window_s = window_s
        self.shared = shared
        self._seen: dict[bytes, tuple[float, str | None]] = {}  # -> until when, which job
        self._order: collections.deque[tuple[float, bytes]] = collections.deque()
        self._lock = threading.Lock()

    def check(
        self, epk: bytes, nonce: bytes, payload: Any, now: float | None = None, job: str | None = None
    ) -> None:
        """Raise `ReplayedRequest` for an envelope seen before or a `ts` outside the window.
        `job`: the fleet's async job the envelope came with; the same job may open it again
        (a drain's deadline sent it back to the queue), any other request may not."""
        now = time.time() if now is None else now
        ts = payload.get("ts") if isinstance(payload, dict) else None
        if ts is not None:
            if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != ts:
                raise errors.InvalidRequest("'ts' must be a number of Unix seconds")
            if abs(now - ts) > self.window_s:
                raise errors.ReplayedRequest(
                    f"'ts' is {now - ts:+.0f} s away from the worker's clock; the window is "
                    f"{self.window_s:g} s (REPLAY_WINDOW_S)"
                )
        key = epk + nonce
        with self._lock:
            while self._order and self._order[0][0] <= now:
                expired, old = self._order.popleft()
                if self._seen.get(old, (None,))[0] == expired:
                    del self._seen[old]
            if key in self._seen and (job is None or self._seen[key][1] != job):
                raise errors.ReplayedRequest("this envelope was already received; seal every request anew")
            self._seen[key] = (now + self.window_s, job)
            self._order.append((now + self.window_s, key))
        if self.shared is not None:
            self._check_shared(key, job)

    def _check_shared(self, key: bytes, job: str | None) -> None:
        try:
            first = self.shared.first_time(key, self.window_s, job)
        except errors.StateUnavailable:
            log.warning("replay memory: the shared state does not answer; this worker's own memory only")
            return
        if not first:
            raise errors.ReplayedRequest(
                "this envelope was already received by the fleet; seal every request anew"
            )

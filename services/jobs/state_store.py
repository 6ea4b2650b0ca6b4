"""The Redis a fleet of workers shares (STATE_URL): one connection pool and the key names.

Every key lives under STATE_PREFIX, so several fleets can share one Redis. The URL is a
secret (it may carry a password): it is never logged and never reaches ComfyUI.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import redis

from services.core import errors
from services.core.config import Settings

log = logging.getLogger("worker.state")
CONNECT_TIMEOUT_S = 2.0
IO_TIMEOUT_S = 5.0  # above the longest blocking read (BLOCK_MS in services.jobs.shared_jobs)
Error = redis.RedisError


class StateStore:
    Error = Error  # what a call raises when Redis does not answer

    def __init__(self, settings: Settings) -> None:
        if not settings.state_url:
            raise ValueError("StateStore needs STATE_URL")
        self.redis = redis.Redis.from_url(
            settings.state_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=IO_TIMEOUT_S,
            health_check_interval=10,
        )
        self.prefix = settings.state_prefix
        self._up = True
        self._lock = threading.Lock()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def up(self) -> bool:
        """Whether the last call reached Redis."""
        return self._up

    def reached(self, up: bool, exc: BaseException | None = None) -> None:
        """Record the outcome of a call; a change is logged once (the class, never the URL)."""
        with self._lock:
            changed, self._up = self._up != up, up
        if changed and up:
            log.warning("the shared state (STATE_URL) answers again")
        elif changed:
            log.warning("the shared state (STATE_URL) does not answer: %s", type(exc).__name__)

    def ping(self) -> None:
        """Raise `StateUnavailable` when Redis does not answer."""
        try:
            self.redis.ping()
        except Error as exc:
            raise self.unavailable(exc) from None
        self.reached(True)

    def first_time(self, token: bytes, ttl_s: float, owner: str | None = None) -> bool:
        """Remember `token` for `ttl_s` across the fleet; False when it was remembered already,
        unless by the same `owner`. Raises `StateUnavailable` when Redis does not answer."""
        name = self.key("seen", hashlib.sha256(token).hexdigest())
        mark = (owner or "").encode() or b"1"
        try:
            first = self.redis.set(name, mark, nx=True, px=max(1, int(ttl_s * 1000)))
            if not first and owner is not None:
                first = self.redis.get(name) == mark
        except Error as exc:
            raise self.unavailable(exc) from None
        self.reached(True)
        return bool(first)

    def unavailable(self, exc: BaseException) -> errors.StateUnavailable:
        """Record that Redis did not answer; the error to answer with."""
        self.reached(False, exc)
        return errors.StateUnavailable(f"the shared state (STATE_URL) does not answer: {type(exc).__name__}")

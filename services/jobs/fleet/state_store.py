"""The Redis a fleet of workers shares (STATE_URL): one connection pool, the key names
(services.jobs.fleet.keys) and the scripts, loaded by name from scripts/<name>.lua.

The URL is a secret (it may carry a password): it is never logged and never reaches ComfyUI.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path

import redis

from services.core import errors
from services.core.config import Settings
from services.jobs.fleet.keys import Names

log = logging.getLogger("worker.state")
CONNECT_TIMEOUT_S = 2.0
IO_TIMEOUT_S = 5.0  # above the longest blocking read (BLOCK_MS in services.jobs.fleet.taking)
Error = redis.RedisError
SCRIPTS = Path(__file__).with_name("scripts")


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
        self.names = Names(settings.state_prefix)
        self._up = True
        self._lock = threading.Lock()

    def script(self, name: str) -> redis.commands.core.Script:
        """The script scripts/<name>.lua (each is headed by the keys it touches), registered."""
        return self.redis.register_script(_script_text(name))

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
        name = self.names.seen(hashlib.sha256(token).hexdigest())
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


@functools.cache
def _script_text(name: str) -> str:
    return (SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")

"""Whose turn it is among the keys whose jobs wait (README: Access), so that a key that floods the
worker does not starve another: the key with the fewest jobs in flight goes first, then the key
served least recently (a key never served before any that was), and a key's own jobs go first
come, first served.

The pool applies this rule to the jobs waiting for an instance in this process
(services.comfy.pool); the fleet applies the same rule in Redis to the jobs waiting for a pod
(services/jobs/fleet/scripts/bind.lua, where the served order is the `served` hash).
"""

from __future__ import annotations

import itertools


class Turns:
    """The served order of keys in this process (not thread-safe: its caller's lock guards it)."""

    def __init__(self) -> None:
        self._served: dict[str, int] = {}  # key name -> when it was last served (a count)
        self._count = itertools.count(1)

    def order(self, key: str, in_flight: int) -> tuple[int, int]:
        """Sorts first for the key whose turn it is; ties go to the job that came first."""
        return in_flight, self._served.get(key, 0)

    def served(self, key: str) -> None:
        """A job of `key` was given its place (an instance, a pod)."""
        self._served[key] = next(self._count)

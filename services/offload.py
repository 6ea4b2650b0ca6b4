"""Run CPU-heavy or blocking native work (hashing, fsync, large base64) off the gevent hub.

Under gunicorn's gevent worker a long native call would stall every request on the worker
(RUNTIME.md 2.4); gevent's threadpool runs it on a real thread instead. Elsewhere (the RunPod
handler, tests) it simply calls the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gevent import get_hub, monkey

T = TypeVar("T")


LARGE = 256 * 1024  # below this, the hop to a pool thread costs more than the work


def offload(function: Callable[..., T], *args: Any, size: int | None = None) -> T:
    """`size` (bytes of work, when known) keeps small work on the hub."""
    if not monkey.is_module_patched("threading") or (size is not None and size < LARGE):
        return function(*args)
    ok, value = get_hub().threadpool.apply(_capture, (function, args))
    if ok:
        return value
    raise value


def _capture(function: Callable[..., T], args: tuple) -> tuple[bool, Any]:
    """gevent prints a traceback for an exception that escapes a pool thread (which could
    carry job data into the logs); hand it back to the caller instead."""
    try:
        return True, function(*args)
    except Exception as exc:
        return False, exc

"""Run CPU-heavy or blocking native work (hashing, fsync, large base64) off the gevent hub.

Under gunicorn's gevent worker a long native call would stall every request on the worker
(docs/runtime.md); gevent's threadpool runs it on a real thread instead. Elsewhere (the RunPod
handler, tests) it simply calls the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from gevent import get_hub, monkey

T = TypeVar("T")


LARGE = 256 * 1024  # below this, the hop to a pool thread costs more than the work


_native_ident = monkey.get_original("_thread", "get_ident")
_HUB_THREAD = _native_ident()  # imported where the app is loaded: the gevent worker's hub thread


def on_hub() -> bool:
    """Whether this code runs on the gevent hub's thread (not in the RunPod handler, a test, or
    a pool thread, where offloading again would make that thread a hub of its own)."""
    return monkey.is_module_patched("threading") and _native_ident() == _HUB_THREAD


def offload(function: Callable[..., T], *args: Any, size: int | None = None) -> T:
    """`size` (bytes of work, when known) keeps small work on the hub; off the hub it runs inline."""
    if not on_hub() or (size is not None and size < LARGE):
        return function(*args)
    ok, value = get_hub().threadpool.apply(_capture, (function, args))
    if ok:
        return value
    raise value


def start(function: Callable[..., T], *args: Any) -> Callable[[], T]:
    """Begin work off the hub and go on; the returned function waits for its result (or raises
    its exception). Lets a greenlet read the next chunk while a thread writes the last one."""
    if not on_hub():
        value = function(*args)
        return lambda: value
    pending = get_hub().threadpool.spawn(_capture, function, args)

    def result() -> T:
        ok, value = pending.get()
        if ok:
            return value
        raise value

    return result


def _capture(function: Callable[..., T], args: tuple) -> tuple[bool, Any]:
    """gevent prints a traceback for an exception that escapes a pool thread (which could
    carry job data into the logs); hand it back to the caller instead."""
    try:
        return True, function(*args)
    except Exception as exc:
        return False, exc

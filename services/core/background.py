"""Background work, started one way, and unexpected errors, logged one way.

A thread is named for its job and is a daemon; an exception that escapes it is logged with
where it happened (file, line, function of each frame) and never with its message or locals,
which may hold a workflow, a prompt or a URL. A loop logs a crash and keeps going, so a bug in
one round does not silently stop a pod from taking jobs or proving it lives.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger("worker.background")
FRAMES = 8  # the innermost frames said: where it broke and what called it


def where(exc: BaseException) -> str:
    """`Type at file:line in function <- caller ...`, innermost first; no message, no locals."""
    frames = traceback.extract_tb(exc.__traceback__)[-FRAMES:]
    places = [f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in reversed(frames)]
    return f"{type(exc).__name__} at {' <- '.join(places) or 'an unknown place'}"


def log_unexpected(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """One line for a bug: what was being done and where it broke."""
    logger.error("%s: unexpected %s", what, where(exc))


def start(name: str, target: Callable[..., Any], *args: Any) -> threading.Thread:
    """Run `target(*args)` on a daemon thread named `name`; a crash is logged, never raised."""

    def run() -> None:
        try:
            target(*args)
        except Exception as exc:
            log_unexpected(log, f"thread {name}", exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def loop(
    name: str, step: Callable[[], Any], pause: float, until: Callable[[], bool] | None = None
) -> threading.Thread:
    """Call `step` again and again (waiting `pause` s after a crash) until `until()` says stop."""

    def run() -> None:
        while until is None or not until():
            try:
                step()
            except Exception as exc:
                log_unexpected(log, f"loop {name}", exc)
                threading.Event().wait(pause)

    return start(name, run)

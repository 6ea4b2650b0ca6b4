"""Drain: the worker finishes what it accepted and takes nothing new, so that a planned restart
loses no job. One state with one owner, the file RUN_DIR/draining (since when, Unix seconds):
`POST /drain` writes it and `DELETE /drain` removes it, and every process of the worker asks it
(a stat), whatever process wrote it. Standard library only: PID 1 is to read it too.
"""

from __future__ import annotations

import contextlib
import os
import time

from services.core.run_dir import RunDir


def since(layout: RunDir) -> float | None:
    """When the drain began; None while the worker takes work."""
    try:
        with open(layout.drain_file, encoding="ascii") as handle:
            return float(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written: a drain all the same
        return time.time()


def begin(layout: RunDir) -> float:
    """Start draining (an earlier start is kept); returns since when."""
    started = since(layout)
    if started is not None:
        return started
    started = time.time()
    partial = f"{layout.drain_file}.{os.getpid()}"
    with open(partial, "w", encoding="ascii") as handle:
        handle.write(repr(started))
    os.replace(partial, layout.drain_file)  # whole or absent for every reader
    return started


def end(layout: RunDir) -> None:
    """Take work again."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(layout.drain_file)

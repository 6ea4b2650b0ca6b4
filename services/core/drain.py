"""Drain: the worker finishes what it accepted and takes nothing new, so that a planned restart
loses no job. One state with one owner, the file RUN_DIR/draining, which every process of the
worker asks (a stat, a read while draining), whatever process wrote it:

    running   no file: work is taken
    draining  the file: since when, and until when for a drain that SIGTERM began
              (DRAIN_TIMEOUT_S; `POST /drain` sets no deadline)
    stopping  the deadline passed or the work ran out: what still runs is cut (services.core.in_hand)
              and PID 1 stops supervisord

Standard library only: PID 1 writes it and counts the work in hand (`busy`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

from services.core.run_dir import RunDir


@dataclass(frozen=True)
class State:
    since: float
    deadline: float | None = None  # Unix seconds; None: drain until told otherwise
    stopping: bool = False


def state(layout: RunDir) -> State | None:
    """None while the worker takes work."""
    try:
        with open(layout.drain_file, encoding="ascii") as handle:
            fields = json.load(handle)
        return State(float(fields["since"]), fields.get("deadline"), bool(fields.get("stopping")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # being written: a drain all the same
        return State(time.time())


def since(layout: RunDir) -> float | None:
    """When the drain began; None while the worker takes work."""
    current = state(layout)
    return current.since if current else None


def begin(layout: RunDir, deadline: float | None = None) -> State:
    """Start draining, until `deadline` (Unix seconds) if given; an earlier start is kept, and
    its deadline unless it had none."""
    current = state(layout)
    if current is not None and (current.deadline is not None or deadline is None):
        return current
    return _write(layout, State(current.since if current else time.time(), deadline))


def stop(layout: RunDir) -> State:
    """The drain's time is up: what still runs is cut."""
    current = state(layout) or State(time.time())
    return _write(layout, State(current.since, current.deadline, stopping=True))


def end(layout: RunDir) -> bool:
    """Take work again; False for a drain with a deadline (a stop signal's), which stays."""
    current = state(layout)
    if current is not None and (current.deadline is not None or current.stopping):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.remove(layout.drain_file)
    return True


def clear(layout: RunDir) -> None:
    """The worker stopped: whatever the drain was, the next start takes work."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(layout.drain_file)


def busy(layout: RunDir) -> list[str]:
    """The kinds of work in hand of processes still alive (a dead process's work is gone)."""
    try:
        names = os.listdir(layout.work_dir)
    except FileNotFoundError:
        return []
    kinds = []
    for name in names:
        pid, _, rest = name.partition("-")
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            kinds.append(rest.partition("-")[2])
    return kinds


def _write(layout: RunDir, current: State) -> State:
    partial = f"{layout.drain_file}.{os.getpid()}"
    with open(partial, "w", encoding="ascii") as handle:
        json.dump(
            {"since": current.since, "deadline": current.deadline, "stopping": current.stopping}, handle
        )
    os.replace(partial, layout.drain_file)  # whole or absent for every reader
    return current

"""The jobs this pod took from the fleet's stream and holds until they end here: shared by the
taking, the running and the liveness of the pod."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from services.core.job_spec import Cancel


@dataclass(eq=False)
class Taken:
    """A job this pod took from the stream. Not started (its entry pending here) until its
    prompt leaves ComfyUI's queue."""

    entry_id: str
    job_id: str
    key: str  # the name of the API key that submitted it
    cancel: Cancel = field(default_factory=Cancel)
    started: bool = False  # its record is `running` under this pod
    dropped: bool = False  # handed back (the pod drains or stops): this run answers nothing
    unsure: bool = False  # its start was sent but Redis never said whether it took
    kept: float = field(default_factory=time.monotonic)  # its ticket's idle time last began again
    lock: threading.Lock = field(default_factory=threading.Lock)  # over started and dropped


class TakenJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, Taken] = {}  # by stream entry
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self.closing = False  # the pod stops: it holds nothing more

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def all(self) -> list[Taken]:
        with self._lock:
            return list(self._jobs.values())

    def add(self, taken: Taken) -> bool:
        """False when the pod is closing: the job is not held here."""
        with self._lock:
            if not self.closing:
                self._jobs[taken.entry_id] = taken
            return not self.closing

    def remove(self, taken: Taken) -> None:
        with self._lock:
            self._jobs.pop(taken.entry_id, None)
        self._changed.set()

    def close(self) -> None:
        with self._lock:
            self.closing = True
        self._changed.set()

    def let_go(self) -> list[Taken]:
        """Mark dropped, and return, the jobs held here that have not started (their prompts
        wait in ComfyUI's queue): this run answers nothing for them."""
        held = []
        for taken in self.all():
            with taken.lock:
                if not taken.started and not taken.dropped:
                    taken.dropped = True
                    held.append(taken)
        return held

    def wait_change(self, seconds: float) -> None:
        """Until a job held here ends or the pod closes, at most `seconds`."""
        self._changed.wait(seconds)
        self._changed.clear()

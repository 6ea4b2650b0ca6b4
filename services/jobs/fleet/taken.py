"""The jobs this pod took from the fleet's stream and holds until they end here, and the `Pod`
every part of the store works for: shared by the taking, the running, the liveness and the
webhook deliveries of the pod."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from services.core.config import Settings
from services.core.job_spec import Cancel
from services.jobs.fleet.state_store import StateStore


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


@dataclass(frozen=True)
class Pod:
    """This pod process as the fleet knows it: its name (its proof of life's), its settings, its
    connection, and the jobs it took."""

    settings: Settings
    store: StateStore
    name: str
    taken: TakenJobs


class Part:
    """One concern of the pod's job store (services.jobs.fleet.store), working for `pod`."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.settings, self.store, self.name, self.taken = pod.settings, pod.store, pod.name, pod.taken
        self.names = pod.store.names

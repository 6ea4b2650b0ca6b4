"""Several ComfyUIs (one per GPU) as one executor: the worker schedules, ComfyUI does not queue.

Each instance runs at most one prompt. A job takes an idle instance that is not out of the pool,
one whose ComfyUI has booted and warmed up first; when none is idle it waits, first come first
served, within its own time. Every instance has its own executor (socket, clean-up, warm-up
gate), so a crash, a hang, a cancel or a clean-up reaches only the job on it. An instance whose
program supervisord gave up on (FATAL), or the watchdog stopped, is out until it runs again.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.comfy import health
from services.comfy.executor import ComfyExecutor
from services.comfy.warmup import Warmup
from services.core import errors, tracing
from services.core.config import Settings
from services.core.job_spec import TIMING, Cancel, JobRequest, Progress

WAIT_TICK_S = 0.5  # how often a waiting job looks at cancel, its deadline and the instances


@dataclass
class Instance:
    settings: Settings
    executor: ComfyExecutor
    warmup: Warmup | None = None
    jobs: int = 0  # at most 1 in a pool; a single ComfyUI takes them all, as before the pool

    @property
    def number(self) -> int:
        return self.settings.comfy_instance


class ComfyPool:
    def __init__(self, settings: Settings, instances: list[Instance]) -> None:
        self.settings = settings
        self.instances = instances
        self._changed = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()
        self._watchers: list[Callable[[], None]] = []
        self._timers: list[Callable[[float, float], None]] = []

    def watch(self, changed: Callable[[], None]) -> None:
        """`changed()` is called when a job saw its ComfyUI die (health looks again at once)."""
        self._watchers.append(changed)

    def time_jobs(self, timed: Callable[[float, float], None]) -> None:
        """`timed(waited_s, ran_s)` after each job that reached an instance: how long it waited
        for one, and how long its ComfyUI took (with one instance, ComfyUI's own queue included)."""
        self._timers.append(timed)

    @classmethod
    def of(
        cls, settings: Settings, make_warmup: Callable[[Settings, ComfyExecutor], Warmup | None]
    ) -> ComfyPool:
        """An executor (and its warm-up) for each of the COMFY_INSTANCES instances."""
        instances = []
        for number in range(settings.instance_count):
            own = settings.instance(number)
            executor = ComfyExecutor(own)
            instances.append(Instance(own, executor, make_warmup(own, executor)))
        return cls(settings, instances)

    def execute(self, request: JobRequest, progress: Progress | None, cancel: Cancel | None) -> dict:
        asked = time.monotonic()
        deadline = asked + request.timeout_s
        with tracing.stage("queue.wait") as waited:
            instance = self._take(request, deadline, cancel)
            waited.set(**{"comfyui.instance": instance.number})
        taken = time.monotonic()
        try:
            return instance.executor.execute(request, progress, cancel, deadline=deadline)
        except errors.ComfyRestarted:
            for changed in self._watchers:
                changed()
            raise
        finally:
            with self._changed:
                instance.jobs -= 1
                self._changed.notify_all()
            waited, ran = taken - asked, time.monotonic() - taken
            if (timing := TIMING.get()) is not None:
                timing.instance, timing.waited_s, timing.ran_s = instance.number, waited, ran
            for timed in self._timers:
                timed(waited, ran)

    @property
    def waiting(self) -> int:
        """Jobs waiting for an instance."""
        return len(self._waiting)

    def usable(self) -> int:
        """Instances that can take a job now or once their current one ended (not out)."""
        states = self._states()
        return sum(
            1 for instance in self.instances if not health.out(states.get(instance.number, ("", 0))[0])
        )

    def spare(self, own: int) -> int:
        """How many more jobs would start now, when `own` jobs were given to the pool that may
        not have reached an instance yet: idle instances that are not out, less the jobs
        waiting for one, and at most as many as are not out less `own`."""
        states = self._states()
        usable = [i for i in self.instances if not health.out(states[i.number][0])]
        idle = sum(1 for i in usable if not i.jobs) - len(self._waiting)
        return max(0, min(idle, len(usable) - own))

    def _take(self, request: JobRequest, deadline: float, cancel: Cancel | None) -> Instance:
        if len(self.instances) == 1:  # nothing to choose: the executor waits for its ComfyUI
            return self._claim_single(request, deadline, cancel)
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
        try:
            while True:
                states = self._states()
                with self._changed:
                    if self._waiting[0] is ticket:
                        free = [
                            i for i in self.instances if not i.jobs and not health.out(states[i.number][0])
                        ]
                        if free:
                            chosen = min(free, key=lambda i: (not self._ready(i, states[i.number]), i.number))
                            chosen.jobs += 1
                            return chosen
                    _check(request, deadline, cancel)
                    self._changed.wait(min(WAIT_TICK_S, max(deadline - time.monotonic(), 0.01)))
        finally:
            with self._changed:
                self._waiting.remove(ticket)
                self._changed.notify_all()

    def _claim_single(self, request: JobRequest, deadline: float, cancel: Cancel | None) -> Instance:
        """One ComfyUI, as before the pool: jobs share it and ComfyUI's queue orders them."""
        [instance] = self.instances
        _check(request, deadline, cancel)
        with self._changed:
            instance.jobs += 1
        return instance

    def _states(self) -> dict[int, tuple[str, int]]:
        """(state, pid) of each instance's program, in one call to supervisord."""
        if len(self.instances) == 1:
            return {0: ("RUNNING", 0)}
        # imported here: supervisord's client costs 2.4 MiB, which a single instance never needs
        from services.comfy import supervisor_state

        infos = supervisor_state.process_infos(self.settings.supervisor_socket)
        states = {}
        for instance in self.instances:
            info = infos.get(instance.settings.comfy_program, {"statename": "STOPPED", "pid": 0})
            states[instance.number] = (info["statename"], info["pid"])
        return states

    @staticmethod
    def _ready(instance: Instance, state: tuple[str, int]) -> bool:
        """Its ComfyUI booted (the relay's word) and its warm-up ended."""
        name, pid = state
        return health.ready(instance.settings, {"statename": name, "pid": pid}, instance.warmup)


def _check(request: JobRequest, deadline: float, cancel: Cancel | None) -> None:
    if cancel is not None and cancel.is_set():
        raise cancel.error
    if time.monotonic() >= deadline:
        raise errors.JobTimeout(
            f"the job did not finish within {request.timeout_s:g} s (no ComfyUI instance was free)"
        )

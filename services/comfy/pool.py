"""Several ComfyUIs (one per GPU) as one executor, each kept busy: the worker schedules.

Each instance holds at most DEPTH jobs: the prompt ComfyUI runs, and the next one with its inputs
uploaded and its prompt waiting in that ComfyUI's queue, so the GPU goes on to it the moment the
first ends while the worker answers the first (history, outputs, seal). A job takes the instance
with the fewest jobs among those that are not out of the pool, one whose ComfyUI has booted and
warmed up first; when every instance is full it waits, within its own time. Waiting jobs take
turns by the API key that sent them: the next free place goes to the key with the fewest jobs on
the instances, first come first served among its jobs, so one key's burst does not starve
another key's single job. A single ComfyUI is scheduled the same way. A prompt still waiting behind another is taken back and moved when another instance falls
idle. A job whose prompt had not started when its ComfyUI died or was restarted runs again (on
another instance, or on its own once it is back): only the running job answers
`comfy_restarted`. Every instance has its own executor (sockets, clean-up, warm-up gate), so a
crash, a hang, a cancel or a clean-up reaches only the jobs on it. An instance whose program
supervisord gave up on (FATAL), or the watchdog stopped, is out until it runs again.
An instance whose GPU failed under a job (`gpu_fault`, services.comfy.device_faults) or whose
pre-flight failed (services.comfy.warmup) is restarted and takes nothing until then; its other
jobs run again, and after OOM_RESTART_AFTER out-of-memory answers in a row it is restarted too.
After GPU_OUT_AFTER device faults or failed pre-flights within GPU_OUT_WINDOW_S it is out for
good: stopped, with the reason in RUN_DIR/<program>-broken (what /healthz shows); when every
instance is, jobs answer `gpu_unusable` (a fleet's go back to the stream). With
MAX_QUEUE_DEPTH, a job that finds that many waiting for an instance answers `busy`.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.comfy import health
from services.comfy.executor import ComfyExecutor, NotStarted
from services.comfy.warmup import Warmup
from services.core import background, errors, tracing
from services.core.config import Settings
from services.core.job_spec import TIMING, Cancel, JobRequest, Progress
from services.core.turns import Turns

WAIT_TICK_S = 0.5  # how often a waiting job looks at cancel, its deadline and the instances
DEPTH = 2  # jobs an instance holds: the running prompt and the next one, queued in its ComfyUI
RERUNS = 2  # runs again of a job whose ComfyUI died before it started (a prompt may be the cause)
STATES_FRESH_S = 0.25  # supervisord is asked for the programs' states at most this often

log = logging.getLogger("worker.comfy")


@dataclass(eq=False)
class _Waiter:
    owner: str  # the name of the key that sent the job
    again: bool  # taken back from an instance: it goes first


@dataclass
class Instance:
    settings: Settings
    executor: ComfyExecutor
    warmup: Warmup | None = None
    jobs: int = 0  # at most DEPTH

    @property
    def number(self) -> int:
        return self.settings.comfy_instance


class ComfyPool:
    def __init__(self, settings: Settings, instances: list[Instance]) -> None:
        self.settings = settings
        self.instances = instances
        self._changed = threading.Condition()
        self._waiting: list[_Waiter] = []
        self._owners: collections.Counter[str] = collections.Counter()  # jobs on instances, by key
        self._turns = Turns()  # the keys' served order (services.core.turns)
        self._turn: _Waiter | None = None  # the waiting job whose turn it is (_choose)
        self._watchers: list[Callable[[], None]] = []
        self._timers: list[Callable[[float, float], None]] = []
        self._known: tuple[float, dict[str, dict]] | None = None  # when asked, supervisord's answer

    def watch(self, changed: Callable[[], None]) -> None:
        """`changed()` is called when a job saw its ComfyUI die (health looks again at once)."""
        self._watchers.append(changed)

    def warmup_of(self, number: int) -> Warmup | None:
        """The warm-up of instance `number`'s current start (services.comfy.health.Held)."""
        return self.instances[number].warmup

    def busy(self, number: int) -> bool:
        return self.instances[number].jobs > 0

    def time_jobs(self, timed: Callable[[float, float], None]) -> None:
        """`timed(waited_s, ran_s)` after each job that reached an instance: how long it waited
        for one, and how long its ComfyUI took (its queue behind another prompt included)."""
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
        pool = cls(settings, instances)
        for instance in instances:
            if instance.warmup is not None:
                instance.warmup.failed = functools.partial(pool._preflight_failed, instance)
        return pool

    def execute(self, request: JobRequest, progress: Progress | None, cancel: Cancel | None) -> dict:
        deadline = time.monotonic() + request.timeout_s
        waited = ran = 0.0
        instance: Instance | None = None
        reruns, again, last = 0, False, None
        try:
            while True:
                asked = time.monotonic()
                with tracing.stage("queue.wait") as wait:
                    instance = self._take(request, deadline, cancel, again, last)
                    wait.set(**{"comfyui.instance": instance.number})
                taken = time.monotonic()
                waited += taken - asked
                try:
                    return instance.executor.execute(
                        request,
                        progress,
                        cancel,
                        deadline=deadline,
                        move=functools.partial(self._idle_besides, instance),
                    )
                except NotStarted as back:
                    last = instance  # moved from it, or its ComfyUI died: another goes first
                    if back.error is not None:
                        self._changed_instances()
                        reruns += 1
                        if request.elsewhere and not self._ready_besides(instance):
                            raise errors.NotStartedHere(
                                "the job had not started when this pod's last ready ComfyUI went down"
                            ) from None
                        if reruns > RERUNS:
                            raise back.error from None
                    log.info(
                        "a job's prompt had not started on instance %d (%s): it runs again",
                        instance.number,
                        back.error or "another instance is idle",
                    )
                    again = True
                except (errors.ComfyRestarted, errors.GpuFault, errors.GpuOutOfMemory) as error:
                    self._after(instance, error)
                    raise
                finally:
                    ran += time.monotonic() - taken
                    with self._changed:
                        instance.jobs -= 1
                        self._owners[request.owner] -= 1
                        self._choose()
                        self._changed.notify_all()
        finally:
            if instance is not None:
                if (timing := TIMING.get()) is not None:
                    timing.instance, timing.waited_s, timing.ran_s = instance.number, waited, ran
                for timed in self._timers:
                    timed(waited, ran)

    def _after(self, instance: Instance, error: errors.WorkerError) -> None:
        """A ComfyUI that died is looked at again; a device fault restarts the instance, and so
        do OOM_RESTART_AFTER out-of-memory answers in a row (fragmented or leaked memory that
        only a restart clears)."""
        if isinstance(error, errors.ComfyRestarted):
            self._changed_instances()
        elif isinstance(error, errors.GpuFault):
            self._failed(instance, "its GPU failed under a job")
        elif isinstance(error, errors.GpuOutOfMemory) and instance.executor.gpu.out_of_memory():
            self._restart(instance, f"{self.settings.oom_restart_after} out-of-memory answers in a row")

    def _preflight_failed(self, instance: Instance, cause: str) -> None:
        """The warm-up's word that the pre-flight of the instance's current start failed."""
        instance.executor.gpu.preflight_failed(health.booted_pid(instance.settings) or "")
        self._failed(instance, "its pre-flight failed")

    def _failed(self, instance: Instance, why: str) -> None:
        """A device fault or a failed pre-flight: restart the instance, or, after GPU_OUT_AFTER
        of them within GPU_OUT_WINDOW_S, take it out for good."""
        if not instance.executor.gpu.failed_again():
            self._restart(instance, why)
            return
        s = self.settings
        reason = (
            f"{why}: {s.gpu_out_after} device faults or failed pre-flights within {s.gpu_out_window_s:g} s"
        )
        log.error("instance %d: %s -> out for good (GPU_OUT_AFTER)", instance.number, reason)
        from services.comfy import control  # supervisord's client: only once it is needed

        background.start("comfy-take-out", control.take_out, instance.settings, reason)
        self._changed_instances()

    def _restart(self, instance: Instance, why: str) -> None:
        """Restart the instance's ComfyUI (a new process gets a new CUDA context) without
        holding up the job's answer; until then it takes nothing (`GpuRecord.faulted`)."""
        log.error("instance %d: %s -> restarting its ComfyUI", instance.number, why)
        from services.comfy import control  # supervisord's client: only once it is needed

        background.start("comfy-restart", control.cycle, instance.settings)
        self._changed_instances()

    def _changed_instances(self) -> None:
        self._known = None  # supervisord is asked again at the next look
        for changed in self._watchers:
            changed()

    @property
    def waiting(self) -> int:
        """Jobs waiting for an instance."""
        return len(self._waiting)

    def full(self) -> bool:
        """MAX_QUEUE_DEPTH jobs wait for an instance: new ones answer `busy` (/readyz: 503)."""
        return 0 < self.settings.max_queue_depth <= len(self._waiting)

    def usable(self) -> int:
        """Instances that are not out: each takes jobs now, once its current one ended, or once
        it restarted (after its GPU failed too, so the number stays put while it restarts)."""
        states = self._states()
        return sum(1 for instance in self.instances if not health.out(states[instance.number][0]))

    def spare(self, own: int, depth: int = DEPTH) -> int:
        """How many more jobs the pool would take now (to run, or to queue behind a running
        one), when `own` jobs were given to it that may not have reached an instance yet: room
        on the instances that are not out, less the jobs waiting for one, and at most `depth` per
        such instance less `own` (with `depth` 1: how many would start at once). None while no instance is ready (booting, restarting, warming
        up): a fleet's other pods run the work meanwhile."""
        dry_run = self.settings.dry_run  # no ComfyUI: every job is answered without one
        states = self._states(always=not dry_run)
        usable = [i for i in self.instances if _takes(i, states[i.number])]
        if not dry_run and not any(_takes(i, states[i.number], now=True) for i in usable):
            return 0
        room = sum(max(0, depth - i.jobs) for i in usable) - len(self._waiting)
        return max(0, min(room, depth * len(usable) - own))

    def _take(
        self,
        request: JobRequest,
        deadline: float,
        cancel: Cancel | None,
        again: bool,
        last: Instance | None,
    ) -> Instance:
        """`again`: the job was taken back from an instance; it goes first in the line.
        `last`: the instance it was taken back from (to move to an idle one), or whose ComfyUI
        died under it (its state may not say so yet): the last choice. A single ComfyUI waits
        for its boot in the executor."""
        ticket = _Waiter(request.owner, again)
        with self._changed:
            if not again and self.full():
                raise errors.Busy(
                    f"{len(self._waiting)} jobs already wait for a ComfyUI here (MAX_QUEUE_DEPTH)"
                )
            self._waiting.append(ticket)
            self._choose()
        try:
            while True:
                states = self._states()
                if not any(_takes(i, states[i.number]) for i in self.instances):
                    _refuse_when_broken(self.instances, request)
                with self._changed:
                    if self._turn is ticket:
                        room = [i for i in self.instances if i.jobs < DEPTH and _takes(i, states[i.number])]
                        if room:
                            chosen = min(
                                room,
                                key=lambda i: (
                                    i is last or not _takes(i, states[i.number], now=True),
                                    i.jobs,
                                    i.number,
                                ),
                            )
                            chosen.jobs += 1
                            self._owners[request.owner] += 1
                            self._turns.served(request.owner)
                            return chosen
                    _check(request, deadline, cancel)
                    self._changed.wait(min(WAIT_TICK_S, max(deadline - time.monotonic(), 0.01)))
        finally:
            with self._changed:
                self._waiting.remove(ticket)
                self._choose()
                self._changed.notify_all()

    def _choose(self) -> None:
        """Whose turn it is, chosen once per change of the line or of the keys' jobs (under
        `_changed`), so each waiting job only compares itself: one taken back from an instance,
        then by the keys' turns (services.core.turns: jobs on the instances, then served least
        recently), the first of that key's."""
        order = {waiter: place for place, waiter in enumerate(self._waiting)}
        self._turn = min(
            self._waiting,
            key=lambda w: (not w.again, *self._turns.order(w.owner, self._owners[w.owner]), order[w]),
            default=None,
        )

    def _ready_besides(self, failed: Instance) -> bool:
        """Whether an instance other than `failed` is ready to take a job."""
        states = self._states(always=True)
        return any(_takes(i, states[i.number], now=True) for i in self.instances if i is not failed)

    def _idle_besides(self, instance: Instance) -> bool:
        """Whether a job still queued on `instance` should move: another instance is ready and
        has no job, and no job waits for one (it would take that instance itself)."""
        if len(self.instances) == 1 or self._waiting:
            return False
        idle = [i for i in self.instances if i is not instance and not i.jobs]
        if not idle:
            return False
        states = self._states()
        return any(_takes(i, states[i.number], now=True) for i in idle)

    def _states(self, always: bool = False) -> dict[int, tuple[str, int]]:
        """(state, pid) of each instance's program, in one call to supervisord at most every
        STATES_FRESH_S (a job that saw its ComfyUI die, and each restart or take-out by the pool,
        have it asked again at once); a single instance's is asked only when `always`
        (scheduling never needs it)."""
        if len(self.instances) == 1 and not always and not self.instances[0].executor.gpu.restarting():
            return {0: ("RUNNING", 0)}
        known, now = self._known, time.monotonic()
        if known is not None and now - known[0] < STATES_FRESH_S:
            infos = known[1]
        else:
            # imported here: supervisord's client costs 2.4 MiB, which a single instance never needs
            from services.comfy import supervisor_state

            infos = supervisor_state.process_infos(self.settings.supervisor_socket)
            self._known = (now, infos)
        states = {}
        for instance in self.instances:
            info = infos.get(instance.settings.comfy_program, {"statename": "STOPPED", "pid": 0})
            states[instance.number] = (info["statename"], info["pid"])
        return states


def _takes(instance: Instance, state: tuple[str, int], now: bool = False) -> bool:
    """The one answer to whether `instance` takes work, given its program's (state, pid): it is
    not out of the pool (a job may wait for it: booting, restarting, warming up); with `now`, it
    takes a job at once: its ComfyUI booted (the relay's word) and its warm-up ended."""
    name, pid = state
    if not now:
        return not health.out(name) and not instance.executor.gpu.faulted(str(pid))
    info = {"statename": name, "pid": pid}
    ready = health.ready(instance.settings, info, instance.warmup)
    return ready and not instance.executor.gpu.faulted(str(pid))  # ready: the relay booted `pid`


def _refuse_when_broken(instances: list[Instance], request: JobRequest) -> None:
    """No instance takes work: when each is out for good, the job never starts here."""
    if all(health.broken(i.settings) is not None for i in instances):
        if request.elsewhere:
            raise errors.NotStartedHere("every ComfyUI of this pod is out for good: its GPU kept failing")
        raise errors.GpuUnusable("every ComfyUI of this worker is out for good: its GPU kept failing")


def _check(request: JobRequest, deadline: float, cancel: Cancel | None) -> None:
    if cancel is not None and cancel.is_set():
        raise cancel.error
    if time.monotonic() >= deadline:
        raise errors.JobTimeout(
            f"the job did not finish within {request.timeout_s:g} s (no ComfyUI instance was free)"
        )

"""Whether ComfyUI instance i takes jobs: the one answer the pool, the probes, the metrics, the
local queue and the watchdog all use.

An instance is *out* while supervisord holds its program FATAL or STOPPED (gave up, or the
watchdog took it out of the pool); it has *booted* once the relay wrote the pid of the program
whose ComfyUI opened its port; it is *ready* when it runs, is up (booted, or answering when
probed) and the warm-up of its current start has ended.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

from services.comfy import devices, relay
from services.core import background
from services.core.config import Settings

if TYPE_CHECKING:
    from services.comfy.pool import ComfyPool

OUT = ("FATAL", "STOPPED")  # a program in these states takes no job
HEALTH_CACHE_S = 1.0
HEALTH_STALE_S = 10.0  # an older value is never answered: the probe waits for a fresh one


class WarmupState(Protocol):
    def ready(self) -> bool: ...


def out(state: str) -> bool:
    return state in OUT


def booted(own: Settings, pid: int) -> bool:
    """The relay's word that this program's ComfyUI has opened its port."""
    try:
        with open(own.run_layout.ready_file(own.comfy_program), encoding="ascii") as handle:
            return handle.read().strip() == str(pid)
    except OSError:
        return False


def answers(own: Settings, timeout: float) -> bool:
    return relay.answers(own.comfy_url, timeout)


def ready(own: Settings, info: dict | None, warmup: WarmupState | None, probe_s: float | None = None) -> bool:
    """Instance `own` takes a job now. `info`: supervisord's process info of its program (None:
    unknown, not ready). Up means booted by the relay's word (cheap: what the scheduler asks) or,
    with `probe_s`, answering HTTP within that time (what probes ask: a hung one is not ready)."""
    if own.dry_run or info is None or info.get("statename") != "RUNNING":
        return False
    up = booted(own, info.get("pid", 0)) if probe_s is None else answers(own, probe_s)
    return up and (warmup is None or warmup.ready())


class ComfyHealth:
    """Each instance's process state (from supervisord), device, warm-up, whether it runs a job,
    and readiness; ready while one instance is. The top-level state and warm-up are instance
    0's, as with a single ComfyUI.

    A probe never waits on a busy ComfyUI: once the cached value is older than HEALTH_CACHE_S
    (and younger than HEALTH_STALE_S) it is answered while one refresh runs beside it."""

    def __init__(self, settings: Settings, pool: ComfyPool | None = None) -> None:
        """`pool`: the instances this process schedules (warm-ups, busy); the local queue, whose
        jobs run in the handler process, has none."""
        self.settings = settings
        self.pool = pool
        self.gpus = devices.of(settings)
        self._cached: tuple[float, dict] | None = None
        self._refreshing = threading.Lock()

    def read(self, fresh: bool = False) -> dict:
        cached = self._cached
        if fresh or cached is None or time.monotonic() - cached[0] >= HEALTH_STALE_S:
            return self._busy(self._refresh())
        if time.monotonic() - cached[0] >= HEALTH_CACHE_S and self._refreshing.acquire(blocking=False):
            background.start("health-refresh", self._refresh, self._refreshing)
        return self._busy(cached[1])

    def instance_ready(self, number: int) -> bool:
        """Read afresh: what a restart waits for."""
        return self.read(fresh=True)["instances"][number]["ready"]

    def _busy(self, value: dict) -> dict:
        """Whether an instance runs a job, as of now (known only where the pool is)."""
        if self.pool is None:
            return value
        jobs = [instance.jobs for instance in self.pool.instances]
        return {**value, "instances": [{**view, "busy": jobs[view["id"]] > 0} for view in value["instances"]]}

    def _refresh(self, held: threading.Lock | None = None) -> dict:
        try:
            # imported here: supervisord's client costs 2.4 MiB, which the pool alone never needs
            from services.comfy import supervisor_state

            now = time.monotonic()
            infos = supervisor_state.process_infos(self.settings.supervisor_socket)
            views = [self._instance(number, infos) for number in range(self.settings.instance_count)]
            first = views[0]
            value = {
                "state": first["state"],
                "ready": any(view["ready"] for view in views),
                "warmup": first["warmup"],
                "instances": views,
            }
            self._cached = (now, value)
            return value
        finally:
            if held is not None:
                held.release()

    def _instance(self, number: int, infos: dict[str, dict]) -> dict:
        own = self.settings.instance(number)
        info = infos.get(own.comfy_program)
        warmup = self.pool.instances[number].warmup if self.pool else None
        return {
            "id": number,
            "device": self.gpus.describe(number),
            "state": info["statename"] if info else "NO_SUPERVISOR",
            "ready": ready(own, info, warmup, probe_s=2.0),
            "warmup": warmup.view() if warmup else None,
        }

"""Whether ComfyUI instance i takes jobs: the one answer the pool, the probes, the metrics, the
local queue and the watchdog all use.

An instance is *out* while supervisord holds its program FATAL or STOPPED (gave up, or the
watchdog took it out of the pool); it has *booted* once the relay wrote the pid of the program
whose ComfyUI opened its port; it is *ready* when it runs, is up (booted, or answering when
probed) and the warm-up of its current start has ended.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from services.comfy import devices, relay
from services.core import background
from services.core.config import Settings

OUT = ("FATAL", "STOPPED")  # a program in these states takes no job
REFRESH_S = 1.0  # how often the state is looked at when nothing said it changed
PROBE_S = 2.0  # a ComfyUI that does not answer /system_stats within this is not ready


class WarmupState(Protocol):
    def ready(self) -> bool: ...

    def view(self) -> dict[str, Any] | None: ...

    @property
    def preflight(self) -> str | None: ...


class Held(Protocol):
    """What the process that schedules the instances knows of them beside supervisord (the pool,
    services.comfy.pool): the warm-up of each one's current start, and whether it runs a job."""

    def warmup_of(self, number: int) -> WarmupState | None: ...

    def busy(self, number: int) -> bool: ...


def out(state: str) -> bool:
    return state in OUT


def booted_pid(own: Settings) -> str | None:
    """The pid of the program whose ComfyUI the relay saw open its port (the ready file)."""
    try:
        with open(own.run_layout.ready_file(own.comfy_program), encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def broken(own: Settings) -> str | None:
    """Why instance `own` is out for good (its GPU kept failing; services.comfy.pool), if it is."""
    try:
        with open(own.run_layout.broken_marker(own.comfy_program), encoding="utf-8") as handle:
            return handle.read().strip() or "out for good"
    except OSError:
        return None


def booted(own: Settings, pid: int) -> bool:
    """The relay's word that this program's ComfyUI has opened its port."""
    return booted_pid(own) == str(pid)


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

    Kept current by a thread of its own, every REFRESH_S and at once when something noticed a
    change (`changed`: a job saw its ComfyUI die): a probe reads the state without waiting on a
    busy ComfyUI, and what supervisord says of a program is never much older than REFRESH_S
    (that a RUNNING ComfyUI hangs shows once its probe gave up, PROBE_S later)."""

    def __init__(self, settings: Settings, held: Held | None = None) -> None:
        """`held`: what this process knows of the instances it schedules (warm-ups, busy); the
        local queue, whose jobs run in the handler process, has none. Whoever holds them calls
        `changed` when one changed."""
        self.settings = settings
        self.held = held
        self.gpus = devices.of(settings)
        self._seen: list[tuple[str, bool]] | None = None
        self._lock = threading.Lock()  # one refresh at a time
        self._changed = threading.Event()
        background.loop("comfy-health", self._tick, REFRESH_S)

    def read(self, fresh: bool = False) -> dict:
        """The processes and ports as last seen (the first read, and `fresh`, look now), with
        what this process knows itself (warm-ups, busy instances) as of now."""
        seen = self._seen
        if fresh or seen is None:
            seen = self._refresh()
        views = [self._view(number, state, up) for number, (state, up) in enumerate(seen)]
        first = views[0]
        return {
            "state": first["state"],
            "ready": any(view["ready"] for view in views),
            "warmup": first["warmup"],
            "instances": views,
        }

    def changed(self) -> None:
        """Something changed (a ComfyUI died under a job): look again now, not at the next tick."""
        self._changed.set()

    def instance_ready(self, number: int) -> bool:
        """Read afresh: what a restart waits for."""
        return self.read(fresh=True)["instances"][number]["ready"]

    def _tick(self) -> None:
        self._changed.wait(REFRESH_S)
        self._changed.clear()
        self._refresh()

    def _refresh(self) -> list[tuple[str, bool]]:
        """Each instance's program state and whether its ComfyUI is up (answers)."""
        # imported here: supervisord's client costs 2.4 MiB, which the pool alone never needs
        from services.comfy import supervisor_state

        with self._lock:
            infos = supervisor_state.process_infos(self.settings.supervisor_socket)
            owns = [self.settings.instance(number) for number in range(self.settings.instance_count)]
            found = [(own, infos.get(own.comfy_program)) for own in owns]
            states = [info["statename"] if info else "NO_SUPERVISOR" for _, info in found]
            # published before the probes, which wait up to PROBE_S on a busy ComfyUI: a program
            # that stopped or started anew is out at once, whatever its last probe said
            last = self._seen or [("", False)] * len(found)
            self._seen = [
                (state, up and ready(own, info, None))
                for state, (own, info), (_, up) in zip(states, found, last, strict=True)
            ]
            seen = [
                (state, ready(own, info, None, PROBE_S))
                for state, (own, info) in zip(states, found, strict=True)
            ]
            self._seen = seen
            return seen

    def _view(self, number: int, state: str, up: bool) -> dict:
        warmup = self.held.warmup_of(number) if self.held else None
        view = {
            "id": number,
            "device": self.gpus.describe(number),
            "state": state,
            "ready": up and (warmup is None or warmup.ready()),
            "warmup": warmup.view() if warmup else None,
            "preflight": warmup.preflight if warmup else None,
            "broken": broken(self.settings.instance(number)) if state in OUT else None,
        }
        if self.held is not None:  # which instance runs a job is known only where the pool is
            view["busy"] = self.held.busy(number)
        return view

"""ComfyUI on demand (pod mode): restart it through supervisord, or have it free its memory;
one control per ComfyUI instance.

A restart stops and starts the instance's program (`comfy`, `comfy-1`, ...) (its jobs in flight answer `comfy_restarted`, as
when it dies) and answers once ComfyUI is ready again (as /readyz says it); two restarts asked at once share one.
Freeing goes through ComfyUI's own `POST /free`, which unloads models and drops its caches
between prompts.
"""

from __future__ import annotations

import os
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from services.comfy import supervisor_state
from services.comfy.client import ComfyClient, ComfyUnreachable
from services.core import errors
from services.core.config import Settings


class ComfyControl:
    def __init__(self, settings: Settings, client: ComfyClient, ready: Callable[[], bool]) -> None:
        """`ready`: what /readyz says, read afresh (ComfyUI RUNNING, answering, warmed up)."""
        self.settings = settings
        self.client = client
        self.ready = ready
        self._restarting = threading.Lock()
        self._last_restart_ended = -float("inf")

    def restart(self) -> dict:
        self._refuse_dry_run()
        asked = time.monotonic()
        with self._restarting:
            if self._last_restart_ended > asked:  # another request restarted it meanwhile
                return {"restarted": True, "seconds": round(time.monotonic() - asked, 2)}
            cycle(self.settings)
            self._wait_ready(asked + self._limit())
            self._last_restart_ended = time.monotonic()
        return {"restarted": True, "seconds": round(time.monotonic() - asked, 2)}

    def free(self) -> dict:
        self._refuse_dry_run()
        try:
            self.client.free()
        except ComfyUnreachable:
            raise errors.ComfyInitFailed("ComfyUI does not answer; nothing to free") from None
        return {"freed": True}

    def _refuse_dry_run(self) -> None:
        if self.settings.dry_run:
            raise errors.NotAvailable("DRY_RUN=1: ComfyUI is not run")

    def _limit(self) -> float:
        """COMFY_BOOT_TIMEOUT_S, plus JOB_TIMEOUT_S for the warm-up when there is one."""
        warmup = self.settings.job_timeout_s if self.settings.warmup_workflow else 0.0
        return self.settings.comfy_boot_timeout_s + warmup

    def _wait_ready(self, deadline: float) -> None:
        while not self.ready():
            if time.monotonic() >= deadline:
                raise errors.ComfyInitFailed(
                    f"ComfyUI was not ready within {self._limit():g} s of its restart"
                )
            time.sleep(0.25)


def cycle(settings: Settings) -> None:
    """Stop and start the instance's program through supervisord (its jobs in flight end)."""
    supervisor = _stop(settings)
    try:
        supervisor.startProcess(settings.comfy_program, False)
    except xmlrpc.client.Fault as fault:
        raise errors.ComfyInitFailed(f"supervisord would not start ComfyUI: {fault.faultString}") from None


def take_out(settings: Settings, why: str) -> None:
    """Out for good: the reason in RUN_DIR/<program>-broken (what /healthz shows; the launcher
    removes it when the program starts again), then the program stopped through supervisord."""
    path = settings.run_layout.broken_marker(settings.comfy_program)
    with open(path + ".new", "w", encoding="utf-8") as marker:
        marker.write(why + "\n")
    os.replace(path + ".new", path)
    _stop(settings)


def _stop(settings: Settings) -> Any:
    """Stop the instance's program (one stopped already is fine); supervisord's proxy."""
    supervisor = supervisor_state.rpc(settings.supervisor_socket).supervisor
    try:
        supervisor.stopProcess(settings.comfy_program, True)
    except xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" not in fault.faultString:
            raise errors.ComfyInitFailed(f"supervisord would not stop ComfyUI: {fault.faultString}") from None
    return supervisor

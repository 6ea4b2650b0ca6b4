"""Restart figures: crash -> ready and hang -> ready (the stand-in's own boot time stated).
Start time and idle memory are bench/footprint.py's."""

from __future__ import annotations

import time
import uuid

import requests

from services.comfy import supervisor_state
from tests.stack import Stack, wait_until
from tests.workflows import with_knob

WATCH = {"WATCH_FAILS": "2", "WATCH_PROBE_TIMEOUT_S": "1"}


def comfy_ready(stack: Stack) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{stack.comfy_port}/system_stats", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def timed(action, until, timeout: float = 120) -> float:
    started = time.monotonic()
    action()
    wait_until(until, timeout, "recovery")
    return time.monotonic() - started


def main() -> None:
    with Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", **WATCH}) as stack:
        stack.wait_http("/readyz", timeout=60)
        rpc = supervisor_state.rpc(stack.socket).supervisor
        boot = timed(
            lambda: (rpc.stopProcess("comfy"), rpc.startProcess("comfy", False)), lambda: comfy_ready(stack)
        )
        print(f"stand-in boot (supervisord start -> /system_stats 200): {boot:.2f} s")

        def fault(knob: str) -> float:
            """Post a knob prompt straight to ComfyUI; seconds until a new pid answers."""
            body = {"prompt": with_knob(knob, color=uuid.uuid4().int % 999), "client_id": "bench"}
            pid = rpc.getProcessInfo("comfy")["pid"]
            seconds = timed(
                lambda: requests.post(f"http://127.0.0.1:{stack.comfy_port}/prompt", json=body, timeout=5),
                lambda: rpc.getProcessInfo("comfy")["pid"] not in (pid, 0) and comfy_ready(stack),
            )
            time.sleep(2.5)  # let the watchdog see the new ComfyUI before the next fault
            return seconds

        crashes, hangs = [], []
        for _ in range(3):
            crashes.append(fault("StandinCrash"))
            hangs.append(fault("StandinHang"))
        print(f"crash -> ready again: {', '.join(f'{t:.2f}' for t in crashes)} s (supervisord autorestart)")
        print(
            f"hang -> ready again:  {', '.join(f'{t:.2f}' for t in hangs)} s (watchdog: TICK_5, {WATCH['WATCH_FAILS']} failed probes of {WATCH['WATCH_PROBE_TIMEOUT_S']} s)"
        )


if __name__ == "__main__":
    main()

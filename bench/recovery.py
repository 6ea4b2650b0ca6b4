"""Restart figures: crash -> ready and hang -> ready (the stand-in's own boot time stated),
entrypoint start -> /healthz 200, and the idle RSS of our processes (everything but ComfyUI)
in each mode."""

from __future__ import annotations

import os
import statistics
import time
import uuid

import requests

from services import supervisor_state
from tests.stack import Stack, wait_until
from tests.workflows import with_knob

WATCH = {"WATCH_FAILS": "2", "WATCH_PROBE_TIMEOUT_S": "1"}


def comfy_ready(stack: Stack) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{stack.comfy_port}/system_stats", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def descendants(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            for child in map(int, handle.read().split()):
                found += [child, *descendants(child)]
    return found


def our_rss_mib(stack: Stack) -> float:
    """Entrypoint, supervisord and every program except comfy (with their children)."""
    comfy = supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]
    excluded = {comfy, *descendants(comfy)} if comfy else set()
    pids = [stack.proc.pid, *descendants(stack.proc.pid)]
    return sum(rss_kib(pid) for pid in pids if pid not in excluded) / 1024


def timed(action, until, timeout: float = 120) -> float:
    started = time.monotonic()
    action()
    wait_until(until, timeout, "recovery")
    return time.monotonic() - started


def main() -> None:
    starts = []
    for _ in range(3):
        stack = Stack("api", {"DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0"})
        started = time.monotonic()
        stack.start()
        stack.wait_http("/healthz", timeout=60)
        starts.append(time.monotonic() - started)
        stack.stop()
    print(
        f"entrypoint start -> /healthz 200 (api, DRY_RUN): median {statistics.median(starts):.2f} s of {starts}"
    )

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

    for mode, wait_path in (("api", "/healthz"), ("serverless", "/v2/LOCAL/health")):
        with Stack(mode, {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}) as stack:
            stack.wait_http(wait_path, timeout=60)
            wait_until(lambda stack=stack: comfy_ready(stack), 60, "comfy")
            time.sleep(5)
            print(
                f"idle RSS of our processes, {mode} mode (entrypoint, supervisord, watchdog, programs; not ComfyUI): {our_rss_mib(stack):.0f} MiB"
            )


if __name__ == "__main__":
    main()

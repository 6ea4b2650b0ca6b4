"""Several ComfyUI instances (COMFY_INSTANCES): jobs per second of 8 concurrent jobs with 2
instances against 1, same run; the stand-in with a node that takes a fixed time (target 1.9x),
then the real ComfyUI with a CPU-bound workflow (bounded by this machine's cores, not by us).
Then the idle memory of the worker's own processes (not ComfyUI) with 2 instances.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections.abc import Callable

import requests

from bench.footprint import descendants, memory_kib
from services.comfy import supervisor_state
from tests.stack import STANDIN, Backend, Stack, installed_real_backend, wait_until
from tests.workflows import with_knob

_colors = itertools.count(1)


def fixed_time(seconds: float) -> dict:
    """A stand-in node that sleeps; its own inputs, so ComfyUI's cache never answers for it."""
    return with_knob("StandinSlow", color=next(_colors), seconds=seconds, steps=4)


def cpu_bound(side: int = 1024) -> dict:
    """Lanczos scaling of a side x side image (a color of its own: ComfyUI answers a graph it
    has seen from its cache) to twice its side and back, on the CPU."""

    def scale(image: list, to: int) -> dict:
        inputs = {"image": image, "upscale_method": "lanczos", "width": to, "height": to, "crop": "disabled"}
        return {"class_type": "ImageScale", "inputs": inputs}

    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": side, "height": side, "batch_size": 1, "color": next(_colors)},
        },
        "2": scale(["1", 0], side * 2),
        "3": scale(["2", 0], side),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
    }


def jobs_per_second(backend: Backend, instances: int, make: Callable[[], dict], jobs: int) -> float:
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1", "COMFY_INSTANCES": str(instances)}
    with Stack("api", env, backend=backend) as stack:
        wait_until(lambda: ready(stack, instances), 300, f"{instances} instances ready")
        requests.post(stack.url + "/run", json={"workflow": make()}, timeout=600)  # warm: first prompt loads
        workflows = [make() for _ in range(jobs)]
        answers: list[int] = []
        started = time.perf_counter()
        threads = [
            threading.Thread(
                target=lambda w=w: answers.append(
                    requests.post(stack.url + "/run", json={"workflow": w}, timeout=600).status_code
                )
            )
            for w in workflows
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    assert answers == [200] * jobs, answers
    return jobs / elapsed


def ready(stack: Stack, instances: int) -> bool:
    try:
        views = requests.get(stack.url + "/healthz", timeout=5).json()["comfy"]["instances"]
    except (requests.RequestException, KeyError):
        return False
    return len(views) == instances and all(view["ready"] for view in views)


def idle_memory() -> None:
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1", "COMFY_INSTANCES": "2"}
    with Stack("api", env) as stack:
        wait_until(lambda: ready(stack, 2), 120, "2 instances ready")
        time.sleep(5)
        everything = descendants(stack.proc.pid)
        comfy = set()
        for program in ("comfy", "comfy-1"):
            relay = supervisor_state.rpc(stack.socket).supervisor.getProcessInfo(program)["pid"]
            comfy |= set(descendants(relay))
        ours = {pid: command for pid, command in everything.items() if pid not in comfy}
        total = 0
        for pid, command in sorted(ours.items()):
            rss, _ = memory_kib(pid)
            total += rss
            print(f"  {pid:>7}  RSS {rss / 1024:6.1f} MiB  {command[:70]}")
        print(f"idle RSS of our processes with 2 ComfyUI instances: {total / 1024:.1f} MiB (target 160 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--backend", choices=["real", "standin", "both"], default="both")
    args = parser.parse_args()
    if args.backend in ("standin", "both"):
        one = jobs_per_second(STANDIN, 1, lambda: fixed_time(1.0), args.jobs)
        two = jobs_per_second(STANDIN, 2, lambda: fixed_time(1.0), args.jobs)
        print(
            f"stand-in, {args.jobs} jobs of a 1 s node: 1 instance {one:.2f} jobs/s, 2 instances {two:.2f} jobs/s"
        )
        print(f"  2 : 1 instances = {two / one:.2f}x (target 1.9x)")
    real = installed_real_backend(args.backend == "real") if args.backend != "standin" else None
    if real is not None:
        one = jobs_per_second(real, 1, cpu_bound, args.jobs)
        two = jobs_per_second(real, 2, cpu_bound, args.jobs)
        print(
            f"real ComfyUI, {args.jobs} CPU-bound jobs: 1 instance {one:.2f} jobs/s, 2 instances {two:.2f} jobs/s"
        )
        print(f"  2 : 1 instances = {two / one:.2f}x (this machine has 2 cores; ComfyUI uses both alone)")
    idle_memory()


if __name__ == "__main__":
    main()

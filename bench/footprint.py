"""Start time and idle memory of the worker's own processes (DRY_RUN, so no ComfyUI): the
entrypoint's start until the mode answers (api: /healthz 200; serverless: the local queue's
/health), then the resident memory of every process of the stack after a few idle seconds, one
line each (RSS, and PSS, which shares common pages fairly). Targets: start <= 1.0 s, RSS <= 150 MiB.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests

from tests.stack import Stack


def descendants(root: int) -> dict[int, str]:
    """The process `root` and every process below it (Stack.children), with their command lines."""
    found, frontier = [root], [root]
    while frontier:
        children = Stack.children(frontier.pop())
        found += children
        frontier += children
    commands = {}
    for pid in found:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                commands[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return commands


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
        for line in handle:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1])
    return values["Rss:"], values["Pss:"]


def start_seconds(mode: str) -> float:
    stack = Stack(mode, {"LOG_SILENT": "1"})
    path = "/healthz" if mode == "api" else "/v2/LOCAL/health"
    started = time.perf_counter()
    stack.start()
    try:
        while True:
            try:
                if requests.get(stack.url + path, timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except requests.ConnectionError:
                pass
            time.sleep(0.01)
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    for mode in ("api", "serverless"):
        starts = [start_seconds(mode) for _ in range(args.starts)]
        print(f"{mode}: start -> answering   median {statistics.median(starts):.2f} s  (of {args.starts})")
        with Stack(mode, {"LOG_SILENT": "1"}).ready() as stack:
            time.sleep(5)
            total_rss = total_pss = emulator_rss = 0
            for pid, command in sorted(descendants(stack.proc.pid).items()):
                rss, pss = memory_kib(pid)
                total_rss, total_pss = total_rss + rss, total_pss + pss
                if "local_queue" in command:
                    emulator_rss = rss
                print(f"  {pid:>7}  RSS {rss / 1024:6.1f} MiB  PSS {pss / 1024:6.1f} MiB  {command[:70]}")
            print(
                f"  idle total              RSS {total_rss / 1024:6.1f} MiB  PSS {total_pss / 1024:6.1f} MiB"
            )
            if emulator_rss:
                print(
                    "  without the local queue (it does not run on RunPod): "
                    f"RSS {(total_rss - emulator_rss) / 1024:6.1f} MiB"
                )


if __name__ == "__main__":
    main()

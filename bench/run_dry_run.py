"""Encrypted DRY_RUN `/run` throughput against a do-nothing route, same server, same run.

Starts the real stack (supervisord -> gunicorn, 1 gevent worker), then drives each route with
the same client (threads with keep-alive sessions) for the same number of requests.
Envelopes are sealed before timing, one per request (the worker refuses a replayed one), so
the figure is the server's cost of open + replay check + payload check + seal.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import threading
import time

import requests

from client.envelope_client import seal_request
from tests.smoke import WORKFLOW
from tests.stack import Stack


def drive(url: str, bodies: list | None, total: int, threads: int) -> tuple[float, list[float]]:
    counter = itertools.count()
    latencies: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        session = requests.Session()
        mine = []
        while (n := next(counter)) < total:
            started = time.perf_counter()
            if bodies is None:
                response = session.get(url, timeout=30)
            else:
                response = session.post(url, json=bodies[n % len(bodies)], timeout=30)
            mine.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"{url} answered {response.status_code}: {response.text[:200]}")
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return total / (time.perf_counter() - started), latencies


def worker_cpu_seconds(stack: Stack) -> float:
    """CPU time used so far by the gunicorn master and its gevent worker(s)."""
    master, workers = stack.api_processes()
    pids = [master, *workers]
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Stack("api", {"ENCRYPTION_REQUIRED": "1", "LOG_SILENT": "1"}) as stack:
        stack.wait_http("/healthz")

        def sealed(count: int) -> list:
            return [seal_request({"workflow": WORKFLOW}, stack.public_key)[0] for _ in range(count)]

        routes = (("baseline GET /ping", "/ping", None), ("encrypted DRY_RUN POST /run", "/run", sealed))
        for _, url, make in routes:  # warm-up
            drive(stack.url + url, make(300) if make else None, 300, args.threads)
        rates: dict[str, list[float]] = {name: [] for name, _, _ in routes}
        cpu: dict[str, float] = {name: 0.0 for name, _, _ in routes}
        latencies: dict[str, list[float]] = {name: [] for name, _, _ in routes}
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both
            for name, url, make in routes:
                bodies = make(args.requests) if make else None
                before = worker_cpu_seconds(stack)
                rps, lat = drive(stack.url + url, bodies, args.requests, args.threads)
                cpu[name] += worker_cpu_seconds(stack) - before
                rates[name].append(rps)
                latencies[name].extend(lat)
        for name, lat in latencies.items():
            p50, p90 = statistics.median(lat) * 1000, statistics.quantiles(lat, n=10)[8] * 1000
            rps = statistics.median(rates[name])
            cpu_ms = cpu[name] * 1000 / (args.requests * args.rounds)
            print(
                f"{name:30s} {rps:7.0f} req/s   p50 {p50:5.2f} ms   p90 {p90:5.2f} ms   server CPU {cpu_ms:.3f} ms/req"
            )
        base, run = (statistics.median(r) for r in rates.values())
        cpu_base, cpu_run = cpu.values()
        print(f"server CPU per request /run : baseline = {cpu_run / cpu_base:.2f}")
        print(
            f"ratio /run : baseline = {run / base:.2f} "
            f"(median of {args.rounds} interleaved rounds of {args.requests} requests, {args.threads} client threads)"
        )


if __name__ == "__main__":
    main()

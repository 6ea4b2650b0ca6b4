"""What LOG_FORMAT=json costs a job: a tiny encrypted DRY_RUN `/run` (its end line and access
line written each time) on a pod with JSON logs against one with text logs, both up at once,
driven in interleaved rounds by the same client. Server CPU per request and latency; the
target (issue 41) is within +1 ms per job.
"""

from __future__ import annotations

import argparse
import statistics

from bench.run_dry_run import drive, worker_cpu_seconds
from client.envelope_client import seal_request
from tests.smoke import WORKFLOW
from tests.stack import Stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pods = {
        log_format: Stack("api", {"ENCRYPTION_REQUIRED": "1", "LOG_FORMAT": log_format}).start()
        for log_format in ("text", "json")
    }
    try:
        for pod in pods.values():
            pod.wait_ready()

        def sealed(pod: Stack, count: int) -> list:
            return [seal_request({"workflow": WORKFLOW}, pod.public_key)[0] for _ in range(count)]

        for pod in pods.values():  # warm-up
            drive(pod.url + "/run", sealed(pod, 300), 300, args.threads)
        rates: dict[str, list[float]] = {name: [] for name in pods}
        cpu = dict.fromkeys(pods, 0.0)
        latencies: dict[str, list[float]] = {name: [] for name in pods}
        for _ in range(args.rounds):
            for name, pod in pods.items():
                bodies = sealed(pod, args.requests)
                before = worker_cpu_seconds(pod)
                rps, lat = drive(pod.url + "/run", bodies, args.requests, args.threads)
                cpu[name] += worker_cpu_seconds(pod) - before
                rates[name].append(rps)
                latencies[name].extend(lat)
        for name in pods:
            lat = latencies[name]
            cpu_ms = cpu[name] * 1000 / (args.requests * args.rounds)
            print(
                f"LOG_FORMAT={name:5s} {statistics.median(rates[name]):7.0f} req/s   "
                f"p50 {statistics.median(lat) * 1000:5.2f} ms   server CPU {cpu_ms:.3f} ms/job"
            )
        extra = (cpu["json"] - cpu["text"]) * 1000 / (args.requests * args.rounds)
        print(f"JSON logs against text, server CPU per job: {extra:+.3f} ms (target within +1 ms)")
    finally:
        for pod in pods.values():
            pod.stop()


if __name__ == "__main__":
    main()

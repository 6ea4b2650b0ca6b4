"""What telemetry costs a job: a tiny encrypted DRY_RUN `/run` on three pods up at once, driven
in interleaved rounds by the same client: text logs and no tracing (the baseline), JSON logs,
and JSON logs with tracing exporting every job's spans over OTLP/HTTP to a receiver in this
process (tests/otlp_receiver.py, which decodes them as a collector would). Server CPU per
request and latency; the target (issue 41) is within +1 ms per job.
"""

from __future__ import annotations

import argparse
import statistics

from bench.run_dry_run import drive, worker_cpu_seconds
from client.envelope_client import seal_request
from tests.otlp_receiver import OtlpReceiver
from tests.smoke import WORKFLOW
from tests.stack import Stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    receiver = OtlpReceiver()
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    kinds = {
        "text, no tracing": {"LOG_FORMAT": "text"},
        "json logs": {"LOG_FORMAT": "json"},
        "json + tracing": {"LOG_FORMAT": "json", **traced},
    }
    pods = {name: Stack("api", {"ENCRYPTION_REQUIRED": "1", **env}).start() for name, env in kinds.items()}
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
        jobs = args.requests * args.rounds
        for name in pods:
            lat = latencies[name]
            print(
                f"{name:17s} {statistics.median(rates[name]):7.0f} req/s   "
                f"p50 {statistics.median(lat) * 1000:5.2f} ms   server CPU {cpu[name] * 1000 / jobs:.3f} ms/job"
            )
        print(
            f"spans received: {len(receiver.spans)} ({len(receiver.spans) / max(1, jobs + 300):.1f} per job)"
        )
        for name in ("json logs", "json + tracing"):
            extra = (cpu[name] - cpu["text, no tracing"]) * 1000 / jobs
            print(f"{name} against the baseline, server CPU per job: {extra:+.3f} ms (target within +1 ms)")
    finally:
        for pod in pods.values():
            pod.stop()
        receiver.close()


if __name__ == "__main__":
    main()

"""A job's `models`, same run, one DRY_RUN pod:
1. a job whose model is already on the volume against the same job without `models`, median
   of interleaved sync /run calls (target: at most +2 ms);
2. a first fetch of a 1 GiB file inside a job against `curl -o` of it (and curl then fsync) from the
   same loopback server's sendfile route, median of interleaved rounds, order alternating (target: at least 0.9x curl's speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import requests

from tests.file_server import FileServer
from tests.stack import Stack

WORKFLOW = {"1": {"class_type": "SaveImage", "inputs": {}}}


def timed_run(session: requests.Session, url: str, payload: dict) -> float:
    started = time.perf_counter()
    answer = session.post(url + "/run", json=payload, timeout=900)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"a benchmark job failed: {answer.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    data = os.urandom(args.mib * 1024 * 1024)
    server = FileServer()
    server.files = {"big.safetensors": data, "small.safetensors": os.urandom(4096)}
    scratch = tempfile.mkdtemp(prefix="bench-models-")
    source = os.path.join(scratch, "source.bin")
    with open(source, "wb") as handle:
        handle.write(data)
    server.on_disk = {"big.safetensors": source}  # /disk/: sent with sendfile, as nginx would
    env = {"DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0", "ALLOW_PRIVATE_DOWNLOADS": "1", "LOG_SILENT": "1"}
    try:
        with Stack("api", env).ready() as pod, requests.Session() as session:
            small = {"type": "loras", "url": f"{server.url}/file/small.safetensors"}
            plain, cached = {"workflow": WORKFLOW}, {"workflow": WORKFLOW, "models": [small]}
            timed_run(session, pod.url, cached)  # fetched once; every later job finds it
            without, with_model = [], []
            for _ in range(args.jobs):
                without.append(timed_run(session, pod.url, plain))
                with_model.append(timed_run(session, pod.url, cached))
            base, ours = 1000 * statistics.median(without), 1000 * statistics.median(with_model)
            assert len(server.requests) == 1, "a cached model was asked for again"
            print(
                f"job without models {base:.2f} ms, with its model cached {ours:.2f} ms "
                f"({ours - base:+.2f} ms, median of {args.jobs} each, interleaved; target at most +2 ms)"
            )

            target = os.path.join(pod.run_dir, "models", "checkpoints", "big.safetensors")
            big = {
                "workflow": WORKFLOW,
                "models": [{"type": "checkpoints", "url": f"{server.url}/disk/big.safetensors"}],
            }
            curl_times, synced_times, job_times = [], [], []

            def with_curl() -> None:
                started = time.perf_counter()
                output = os.path.join(scratch, "curl.bin")
                subprocess.run(
                    ["curl", "-sS", "-o", output, f"{server.url}/disk/big.safetensors"], check=True
                )
                curl_times.append(time.perf_counter() - started)
                fd = os.open(output, os.O_RDONLY)
                os.fsync(fd)  # the job's fetch makes the file durable before the rename
                os.close(fd)
                synced_times.append(time.perf_counter() - started)
                os.remove(output)

            def with_job() -> None:
                job_times.append(timed_run(session, pod.url, big))
                os.remove(target)  # the next round fetches it again

            for round_ in range(args.rounds):
                for run in (with_curl, with_job) if round_ % 2 == 0 else (with_job, with_curl):
                    os.sync()  # the last transfer's writeback is not the next one's cost
                    run()
            curl_s, job_s = statistics.median(curl_times), statistics.median(job_times)
            synced_s = statistics.median(synced_times)
            size = len(data)
            print(f"curl -o            median {curl_s:6.2f} s  {size / curl_s / 1e6:7.1f} MB/s")
            print(f"curl -o, fsync     median {synced_s:6.2f} s  {size / synced_s / 1e6:7.1f} MB/s")
            print(f"job, first fetch   median {job_s:6.2f} s  {size / job_s / 1e6:7.1f} MB/s")
            print(
                f"speed job : curl = {curl_s / job_s:.2f}x, : curl+fsync = {synced_s / job_s:.2f}x ({args.mib} MiB, "
                f"loopback sendfile, median of {args.rounds} interleaved rounds; target at least 0.9x)"
            )
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", scratch], check=False)


if __name__ == "__main__":
    main()

"""Does a large result block the API's gevent hub? /ping latency while encrypted jobs return
~12 MB PNGs (base64, sealing and JSON of the answer), against /ping on the idle worker, same run.
"""

from __future__ import annotations

import statistics
import threading
import time

import requests

from client.envelope_client import seal_request
from tests.stack import Stack

NOISE = {
    "1": {"class_type": "StandinNoise", "inputs": {"width": 2048, "height": 2048}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "noise"}},
}


def ping_latencies(url: str, seconds: float) -> list[float]:
    session, samples, end = requests.Session(), [], time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        session.get(url + "/ping", timeout=30)
        samples.append(time.perf_counter() - started)
        time.sleep(0.01)
    return samples


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"p50 {statistics.median(ms):6.2f} ms  p99 {ms[int(len(ms) * 0.99) - 1]:7.2f} ms  max {ms[-1]:7.2f} ms  (n={len(ms)})"


def main() -> None:
    with Stack("api", {"DRY_RUN": "0", "LOG_SILENT": "1"}).ready() as stack:
        idle = ping_latencies(stack.url, 5)
        done = threading.Event()
        sizes = []

        def jobs() -> None:
            session = requests.Session()
            while not done.is_set():
                body, _ = seal_request({"workflow": NOISE}, stack.public_key)
                response = session.post(stack.url + "/run", json=body, timeout=120)
                sizes.append(len(response.content))

        workers = [threading.Thread(target=jobs) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(2)
        busy = ping_latencies(stack.url, 10)
        done.set()
        for worker in workers:
            worker.join()
        print(f"/ping, idle worker:                 {summary(idle)}")
        print(f"/ping, while large jobs are answered: {summary(busy)}")
        print(
            f"({len(sizes)} encrypted answers of ~{statistics.median(sizes) / 1e6:.1f} MB each, 2 at a time, 1 gevent worker)"
        )
        print(f"ratio of p50 busy : idle = {statistics.median(busy) / statistics.median(idle):.2f}")


if __name__ == "__main__":
    main()

"""Do the probes stay fast while big payloads flow? /healthz, /readyz and /ping latency while three
clients send encrypted jobs that load a random 1536x1536 PNG (~7 MB) and save it back (LoadImage ->
SaveImage), against the same probes on the idle worker, same run. The real ComfyUI when installed
(`--backend`), else the stand-in.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import threading
import time

import requests
from PIL import Image

from client.envelope_client import open_answer, seal_request
from tests.stack import STANDIN, Stack, installed_real_backend, wait_until

PROBES = ("/healthz", "/readyz", "/ping")
ROUND_TRIP = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "noise.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "back"}},
}


def noise_png(side: int = 1536) -> str:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def probe_latencies(url: str, seconds: float) -> dict[str, list[float]]:
    """Each probe in turn, 10 ms apart, for `seconds`."""
    session, samples, end = requests.Session(), {p: [] for p in PROBES}, time.monotonic() + seconds
    while time.monotonic() < end:
        for path in PROBES:
            started = time.perf_counter()
            session.get(url + path, timeout=30)
            samples[path].append(time.perf_counter() - started)
            time.sleep(0.01)
    return samples


def all_ready(stack: Stack) -> bool:
    try:
        return all(
            i["ready"] for i in requests.get(stack.url + "/healthz", timeout=5).json()["comfy"]["instances"]
        )
    except requests.RequestException:
        return False


def p99(samples: list[float]) -> float:
    ms = sorted(s * 1000 for s in samples)
    return ms[max(0, int(len(ms) * 0.99) - 1)]


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"p50 {statistics.median(ms):6.2f} ms  p99 {p99(samples):7.2f} ms  max {ms[-1]:7.2f} ms  (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["real", "standin"], default=None)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--instances", type=int, default=1, help="COMFY_INSTANCES")
    args = parser.parse_args()
    real = installed_real_backend(args.backend == "real") if args.backend != "standin" else None
    backend = real or STANDIN
    image = noise_png()
    env = {"DRY_RUN": "0", "LOG_SILENT": "1", "JOB_TIMEOUT_S": "300", "COMFY_INSTANCES": str(args.instances)}
    with Stack("api", env, backend=backend) as stack:
        wait_until(lambda: all_ready(stack), 300, "every ComfyUI instance ready")
        idle = probe_latencies(stack.url, 5)
        done, answered, failed = threading.Event(), [], []

        def client() -> None:
            session = requests.Session()
            payload = {"workflow": ROUND_TRIP, "images": [{"name": "noise.png", "image": image}]}
            while not done.is_set():
                body, ephemeral = seal_request(payload, stack.public_key)
                response = session.post(stack.url + "/run", json=body, timeout=300)
                result = open_answer(response.json(), ephemeral, stack.public_key)
                (answered if result.get("status") == "ok" else failed).append(len(response.content))

        clients = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in clients:
            thread.start()
        time.sleep(3)  # every client past its first request
        busy = probe_latencies(stack.url, args.seconds)
        done.set()
        for thread in clients:
            thread.join()
    print(
        f"backend: {backend.name}, {args.instances} ComfyUI instance(s); {args.clients} clients, "
        f"a {len(image) * 3 // 4 / 1e6:.1f} MB PNG each way"
    )
    for path in PROBES:
        print(f"{path:9s} idle: {summary(idle[path])}")
        print(f"{path:9s} busy: {summary(busy[path])}")
    worst_busy = max(p99(busy[p]) for p in PROBES)
    worst_idle = max(p99(idle[p]) for p in PROBES)
    print(f"{len(answered)} jobs answered ok, {len(failed)} failed while measuring and after")
    print(
        f"health p99 busy {worst_busy:.1f} ms (target 100 ms); busy : idle p99 = {worst_busy / worst_idle:.2f}"
    )


if __name__ == "__main__":
    main()

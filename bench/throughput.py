"""Does the GPU wait for the worker? Jobs per second of N distinct jobs (issue 42):

- through the worker: 2 x instances concurrent clients, each sending encrypted `/run`s one after
  another until the jobs are gone;
- direct, the baseline, on the same ComfyUI processes in the same run: as many clients, each
  bound to one instance, queueing all its prompts there at once (ComfyUI's own queue keeps the
  instance busy), then reading each prompt's history and fetching its image, as a client does;
- the fleet: two pods of one instance each on a real redis-server, the jobs submitted async to
  both and polled, against one pod with two instances (the same ComfyUI count).

Jobs are Lanczos scalings of a distinct image (bench.pool.cpu_bound), sized to take ~85 ms
and ~550 ms on this machine with the real ComfyUI. Best of `--rounds`, worker and direct
alternated.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable

import requests
import websocket

from bench.pool import cpu_bound, ready
from client.envelope_client import open_answer, seal_request
from tests.redis_server import RedisServer
from tests.stack import STANDIN, Backend, Stack, installed_real_backend, wait_until

# the image's side by a job's time on one instance (the real ComfyUI, this machine)
SIZES = {"~85 ms": 660, "~550 ms": 1600}


def run_in_parallel(clients: int, work: Callable[[int], None]) -> float:
    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def through_worker(pod: Stack, workflows: list[dict], clients: int) -> float:
    """Jobs per second through the encrypted /run."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for workflow in workflows:
        todo.put(workflow)
    failures = []

    def client(_k: int) -> None:
        with requests.Session() as session:
            while True:
                try:
                    workflow = todo.get_nowait()
                except queue.Empty:
                    return
                request, ephemeral = seal_request({"workflow": workflow}, pod.public_key)
                answer = session.post(pod.url + "/run", json=request, timeout=600)
                result = open_answer(answer.json(), ephemeral, pod.public_key)
                if result.get("status") != "ok" or not result.get("outputs"):
                    failures.append(str(result)[:200])

    elapsed = run_in_parallel(clients, client)
    assert not failures, failures[:3]
    return len(workflows) / elapsed


def direct(comfy_urls: list[str], workflows: list[dict], clients: int) -> float:
    """Jobs per second queued straight into the ComfyUIs."""
    share = [workflows[k::clients] for k in range(clients)]

    def client(k: int) -> None:
        url = comfy_urls[k % len(comfy_urls)]
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(url.replace("http", "ws") + f"/ws?clientId={client_id}", timeout=600)
        with requests.Session() as session:
            pending = {
                session.post(url + "/prompt", json={"prompt": w, "client_id": client_id}, timeout=60).json()[
                    "prompt_id"
                ]
                for w in share[k]
            }
            while pending:
                raw = ws.recv()
                if not isinstance(raw, str):
                    continue
                data = json.loads(raw).get("data", {})
                prompt_id = data.get("prompt_id")
                if prompt_id in pending and "node" in data and data["node"] is None:
                    pending.discard(prompt_id)
                    entry = session.get(url + f"/history/{prompt_id}", timeout=60).json()[prompt_id]
                    image = entry["outputs"]["4"]["images"][0]
                    assert session.get(url + "/view", params=image, timeout=60).status_code == 200
        ws.close()

    return len(workflows) / run_in_parallel(clients, client)


def pod_against_direct(backend: Backend, instances: int, jobs: int, rounds: int) -> None:
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "1", "LOG_SILENT": "1", "COMFY_INSTANCES": str(instances)}
    with Stack("api", env, backend=backend) as pod:
        wait_until(lambda: ready(pod, instances), 300, f"{instances} instances ready")
        urls = [f"http://127.0.0.1:{pod.comfy_port + i}" for i in range(instances)]
        clients = 2 * instances
        for name, side in SIZES.items():
            direct(urls, [cpu_bound(side) for _ in range(2 * clients)], clients)  # warm both paths
            through_worker(pod, [cpu_bound(side) for _ in range(2 * clients)], clients)
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(through_worker(pod, [cpu_bound(side) for _ in range(jobs)], clients))
                theirs.append(direct(urls, [cpu_bound(side) for _ in range(jobs)], clients))
            print(
                f"{instances} instance(s), jobs {name}: worker {max(ours):.2f} jobs/s, "
                f"direct {max(theirs):.2f} jobs/s: {max(ours) / max(theirs):.2f}x "
                f"(rounds: worker {', '.join(f'{r:.2f}' for r in ours)}; direct {', '.join(f'{r:.2f}' for r in theirs)})"
            )


def fleet_against_pod(backend: Backend, jobs: int, rounds: int) -> None:
    """Two pods of one instance on Redis against one pod of two, async jobs, ~550 ms each."""
    redis = RedisServer().start()
    try:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        base = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1", "STATE_PREFIX": prefix}
        kinds = {
            "one pod, 2 instances": [{**base, "COMFY_INSTANCES": "2"}],
            "two pods on Redis, 1 instance each": [{**base, "STATE_URL": redis.url}] * 2,
        }
        best = {}
        for name, envs in kinds.items():
            pods = [Stack("api", env, backend=backend).start() for env in envs]
            try:
                each = 2 // len(pods)
                for pod in pods:
                    wait_until(lambda pod=pod, each=each: ready(pod, each), 300, "instances ready")
                rates = [
                    async_jobs(pods, [cpu_bound(SIZES["~550 ms"]) for _ in range(jobs)])
                    for _ in range(rounds)
                ]
                best[name] = max(rates)
                print(f"{name}: {max(rates):.2f} jobs/s (rounds: {', '.join(f'{r:.2f}' for r in rates)})")
            finally:
                for pod in pods:
                    pod.stop()
        pod, fleet = best.values()
        print(f"the fleet path: {fleet / pod:.2f}x of one pod with the same instances")
    finally:
        redis.stop()


def async_jobs(pods: list[Stack], workflows: list[dict]) -> float:
    started = time.perf_counter()
    with requests.Session() as session:
        ids = [
            (
                pods[n % len(pods)],
                session.post(
                    pods[n % len(pods)].url + "/run", params={"async": "1"}, json={"workflow": w}, timeout=30
                ).json()["id"],
            )
            for n, w in enumerate(workflows)
        ]
        for pod, job_id in ids:
            while (state := session.get(pod.url + f"/jobs/{job_id}", timeout=10).json()["state"]) not in (
                "completed",
                "failed",
            ):
                time.sleep(0.01)
            assert state == "completed"
    return len(workflows) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", choices=["real", "standin"], default="real")
    args = parser.parse_args()
    backend = installed_real_backend(True) if args.backend == "real" else STANDIN
    for instances in (1, 2):
        pod_against_direct(backend, instances, args.jobs, args.rounds)
    fleet_against_pod(backend, args.jobs, args.rounds)


if __name__ == "__main__":
    main()

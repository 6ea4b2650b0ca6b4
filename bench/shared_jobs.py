"""Async jobs through the fleet's Redis (STATE_URL), same run:
1. submit -> result of a tiny (DRY_RUN) job through Redis against in-process on the same kind of
   pod, medians over sequential jobs (target: at most +5 ms);
2. 12 jobs of a fixed 2 s (the stand-in's StandinSlow) submitted to one pod, with three pods on
   the Redis against one (target: at least 2.7x the jobs per second).
"""

from __future__ import annotations

import itertools
import statistics
import time
import uuid

import requests

from tests.redis_server import RedisServer
from tests.stack import Stack, wait_until
from tests.workflows import with_knob

TINY = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}
ROUNDS = 200
SLOW_JOBS = 12
_colors = itertools.count(1)


def submit_to_result(pod: Stack, session: requests.Session) -> float:
    """Seconds from submitting an async job to reading its result (polled without pause)."""
    started = time.perf_counter()
    job_id = session.post(pod.url + "/run", params={"async": "1"}, json=TINY, timeout=10).json()["id"]
    while session.get(pod.url + f"/jobs/{job_id}", timeout=10).json()["state"] != "completed":
        pass
    return time.perf_counter() - started


def median_ms(pod: Stack) -> float:
    with requests.Session() as session:
        for _ in range(20):  # warm connections and code paths
            submit_to_result(pod, session)
        return 1000 * statistics.median(submit_to_result(pod, session) for _ in range(ROUNDS))


def env(extra: dict[str, str]) -> dict[str, str]:
    return {"ENCRYPTION_REQUIRED": "0", "LOG_SILENT": "1", **extra}


def slow_jobs_per_second(redis: RedisServer, pods: int) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    fleet_env = env({"DRY_RUN": "0", "JOB_TIMEOUT_S": "120", "STATE_URL": redis.url, "STATE_PREFIX": prefix})
    fleet = [Stack("api", fleet_env).start() for _ in range(pods)]
    try:
        for pod in fleet:
            pod.wait_ready()
        workflows = [
            with_knob("StandinSlow", color=next(_colors), seconds=2, steps=4) for _ in range(SLOW_JOBS)
        ]
        started = time.perf_counter()
        ids = [
            requests.post(
                fleet[0].url + "/run", params={"async": "1"}, json={"workflow": w}, timeout=10
            ).json()["id"]
            for w in workflows
        ]

        def all_done() -> bool:
            states = [requests.get(fleet[0].url + f"/jobs/{i}", timeout=10).json()["state"] for i in ids]
            if "failed" in states or "cancelled" in states:
                raise RuntimeError(f"a benchmark job did not complete: {states}")
            return states.count("completed") == len(ids)

        wait_until(all_done, 300, "the slow jobs")
        return SLOW_JOBS / (time.perf_counter() - started)
    finally:
        for pod in fleet:
            pod.stop()


def main() -> None:
    redis = RedisServer().start()
    try:
        with Stack("api", env({"DRY_RUN": "1"})).ready() as alone:
            in_process = median_ms(alone)
        with Stack("api", env({"DRY_RUN": "1", "STATE_URL": redis.url})).ready() as shared:
            through_redis = median_ms(shared)
        print(
            f"async submit -> result, tiny job, median of {ROUNDS}: in-process {in_process:.2f} ms, "
            f"through Redis {through_redis:.2f} ms ({through_redis - in_process:+.2f} ms; target at most +5 ms)"
        )
        one = slow_jobs_per_second(redis, 1)
        three = slow_jobs_per_second(redis, 3)
        print(
            f"{SLOW_JOBS} jobs of 2 s submitted to one pod: 1 pod {one:.3f} jobs/s, 3 pods {three:.3f} jobs/s, "
            f"ratio {three / one:.2f}x (target at least 2.7x)"
        )
    finally:
        redis.stop()


if __name__ == "__main__":
    main()

"""What keys taking turns across a fleet costs: one pod's SharedJobs in this process on a real
Redis runs JOBS tiny jobs (DRY_RUN) queued beforehand, all of one key (the baseline: one line,
nothing to choose) against the same jobs spread over 100 and over 1,000 keys (each take looks at
every key that has a job waiting). Same run, rounds alternate; medians of jobs per second.
Target (issue 43): 1,000 keys at least 0.5x of one key.
"""

from __future__ import annotations

import statistics
import time
import uuid

from services.core import config
from services.jobs.fleet import SharedJobs
from services.jobs.fleet.state_store import StateStore
from services.jobs.quotas import Quotas
from tests.pipelines import pipeline
from tests.redis_server import RedisServer

JOBS, ROUNDS = 1000, 3
TINY = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}


def pod(redis: RedisServer, prefix: str, capacity) -> SharedJobs:
    settings = config.load(
        {
            "DRY_RUN": "1",
            "ENCRYPTION_REQUIRED": "0",
            "LOG_SILENT": "1",
            "STATE_URL": redis.url,
            "STATE_PREFIX": prefix,
        }
    )
    store = StateStore(settings)
    return SharedJobs(
        settings, pipeline(settings, None, shared=store), store, capacity, Quotas(settings, store)
    )


def jobs_per_second(redis: RedisServer, keys: int) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    submitter = pod(redis, prefix, lambda own: 0)
    ids = [submitter.start(TINY, owner=f"k{n % keys}").id for n in range(JOBS)]
    started = time.perf_counter()
    worker = pod(redis, prefix, lambda own: 4 - own)
    while worker.waiting() or submitter.get(ids[-1]).state != "completed":
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if any(submitter.get(i).state != "completed" for i in ids):
        raise RuntimeError("a benchmark job did not complete")
    worker.taking.capacity = lambda own: 0
    submitter.close()
    worker.close()
    return JOBS / elapsed


def main() -> None:
    redis = RedisServer().start()
    try:
        rates: dict[int, list[float]] = {1: [], 100: [], 1000: []}
        for _ in range(ROUNDS):
            for keys, found in rates.items():
                found.append(jobs_per_second(redis, keys))
        one = statistics.median(rates[1])
        for keys, found in rates.items():
            rate = statistics.median(found)
            print(
                f"{JOBS} tiny fleet jobs over {keys} key(s): {rate:.0f} jobs/s, {rate / one:.2f}x of one key"
            )
        print("target: 1000 keys at least 0.5x of one key")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()

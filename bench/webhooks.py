"""Webhooks: an async DRY_RUN job with a webhook against the same job without, interleaved, same
run and pod (submit -> completed, polled without pause; median of many). Target: the job's own
latency unchanged within 1 ms. Also reports the time from the job's end (the event's timestamp)
to the receiver's answer, the delivery being signed with a key (WEBHOOK_SECRET) and verified by
the receiver with the standardwebhooks library.
"""

from __future__ import annotations

import base64
import os
import statistics
import time
from datetime import datetime

import requests

from tests.stack import Stack, wait_until
from tests.webhook_receiver import Receiver

ROUNDS = 200
JOB = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}


def submit_to_completed(pod: Stack, session: requests.Session, payload: dict) -> float:
    started = time.perf_counter()
    job_id = session.post(pod.url + "/run", params={"async": "1"}, json=payload, timeout=10).json()["id"]
    while session.get(pod.url + f"/jobs/{job_id}", timeout=10).json()["state"] != "completed":
        pass
    return time.perf_counter() - started


def main() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = Receiver([secret])
    env = {
        "DRY_RUN": "1",
        "ENCRYPTION_REQUIRED": "0",
        "LOG_SILENT": "1",
        "WEBHOOK_SECRET": secret,
        "ALLOW_PRIVATE_WEBHOOKS": "1",
    }
    hooked = {**JOB, "webhook": receiver.url("/bench")}
    plain, with_hook = [], []
    try:
        with Stack("api", env).ready() as pod, requests.Session() as session:
            for _ in range(20):  # warm connections and code paths
                submit_to_completed(pod, session, JOB)
                submit_to_completed(pod, session, hooked)
            for _ in range(ROUNDS):
                plain.append(submit_to_completed(pod, session, JOB))
                with_hook.append(submit_to_completed(pod, session, hooked))
            wait_until(lambda: len(receiver.to("/bench")) == 20 + ROUNDS, 60, "every webhook")
    finally:
        receiver.stop()
    calls = receiver.to("/bench")[20:]
    assert all(not isinstance(c.verified, Exception) for c in calls), "a webhook did not verify"
    delays = sorted(
        1000 * (c.at - datetime.fromisoformat(c.verified["timestamp"].replace("Z", "+00:00")).timestamp())
        for c in calls
    )
    base, hook = 1000 * statistics.median(plain), 1000 * statistics.median(with_hook)
    print(f"async DRY_RUN job, submit -> completed, median of {ROUNDS} interleaved (same pod)")
    print(
        f"  without webhook {base:.2f} ms, with webhook {hook:.2f} ms: {hook - base:+.2f} ms (target within 1 ms)"
    )
    print(
        f"  job end -> receiver's 2xx (signed, verified): median {statistics.median(delays):.1f} ms, "
        f"p90 {delays[int(len(delays) * 0.9)]:.1f} ms"
    )


if __name__ == "__main__":
    main()

"""Webhooks: an async DRY_RUN job with a webhook against the same job without, interleaved, same
run and pod (submit -> completed, polled every 2 ms; median of many; a round starts once the last
webhook arrived, so a delivery never overlaps the next job). Target: the job's own latency
unchanged within 1 ms. Also reports the time from the job's end (the event's timestamp)
to the receiver's answer, the delivery being signed with a key (WEBHOOK_SECRET) and verified by
the receiver with the standardwebhooks library. The receiver runs in a process of its own, so
that its work does not slow the measuring client.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import statistics
import tempfile
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
        time.sleep(0.002)
    return time.perf_counter() - started


def receive(secret: str, port: multiprocessing.Queue, record: str) -> None:
    """A receiver process: each verified call as a JSON line (when, the event's timestamp)."""
    receiver = Receiver([secret])
    port.put(receiver.port)
    written = 0
    with open(record, "a", encoding="utf-8") as out:
        while True:
            calls = receiver.to("/bench")
            for call in calls[written:]:
                ok = not isinstance(call.verified, Exception)
                out.write(
                    json.dumps({"at": call.at, "ok": ok, "stamp": call.verified["timestamp"] if ok else None})
                    + "\n"
                )
                out.flush()
            written = len(calls)
            time.sleep(0.05)


def main() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    record = tempfile.mktemp(prefix="webhooks-", suffix=".jsonl")
    ports: multiprocessing.Queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=receive, args=(secret, ports, record), daemon=True)
    child.start()
    url = f"http://127.0.0.1:{ports.get(timeout=30)}/bench"
    env = {
        "DRY_RUN": "1",
        "ENCRYPTION_REQUIRED": "0",
        "LOG_SILENT": "1",
        "WEBHOOK_SECRET": secret,
        "ALLOW_PRIVATE_WEBHOOKS": "1",
    }
    hooked = {**JOB, "webhook": url}
    plain, with_hook = [], []
    try:
        with Stack("api", env).ready() as pod, requests.Session() as session:
            for done in range(20 + ROUNDS):  # the first 20: warming connections and code paths
                plain.append(submit_to_completed(pod, session, JOB))
                with_hook.append(submit_to_completed(pod, session, hooked))
                # each job measured alone: the last delivery is in before the next round starts
                wait_until(lambda n=done: len(calls(record)) > n, 30, "the webhook")
            plain, with_hook = plain[20:], with_hook[20:]
        received = calls(record)[20:]
    finally:
        child.terminate()
        os.remove(record)
    assert all(call["ok"] for call in received), "a webhook did not verify"
    delays = sorted(
        1000 * (c["at"] - datetime.fromisoformat(c["stamp"].replace("Z", "+00:00")).timestamp())
        for c in received
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


def calls(record: str) -> list[dict]:
    with open(record, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


if __name__ == "__main__":
    main()

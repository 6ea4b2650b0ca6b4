"""A rolling restart of a fleet, with the drain against stopping at once, same run.

Three pods on one Redis (STATE_URL, the ComfyUI stand-in), a client that keeps four async jobs
of 6 s in flight (submitted round robin, re-sent to the next pod on a 503 or a refused
connection, polled on any pod that answers), while each pod in turn gets SIGTERM on its PID 1,
exits and is replaced by a new one. Once with DRAIN_TIMEOUT_S=20, once with DRAIN_TIMEOUT_S=0
(what a stop did before the drain: jobs running on the stopped pod end `worker_lost`).
Reports jobs submitted, completed, failed (by error code) and lost (never ended, or gone), and
for each restart the seconds from the signal to the old pod's exit and to the new pod's
readiness. Target with the drain: 0 lost, 0 failed.
"""

from __future__ import annotations

import collections
import itertools
import statistics
import threading
import time
import uuid

import requests

from tests.redis_server import RedisServer
from tests.stack import Stack
from tests.workflows import with_knob

IN_FLIGHT = 4
JOB_S = 6  # longer than gunicorn's graceful timeout (4 s), which a stop at once gives requests
FINAL = ("completed", "failed", "cancelled")
_colors = itertools.count(1)


class Client:
    """Submits and polls through whichever pods are in `pods` now (replaced during the run)."""

    def __init__(self, pods: list[Stack]) -> None:
        self.pods = pods
        self.ended: dict[str, dict] = {}
        self.open: set[str] = set()
        self.resent = 0
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, timeout: float) -> None:
        """Stop submitting; wait for what is open to end."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + timeout
        while self.open and time.monotonic() < deadline:
            self._poll()
            time.sleep(0.2)

    def _run(self) -> None:
        while not self._stop.is_set():
            if len(self.open) < IN_FLIGHT:
                self._submit()
            self._poll()
            time.sleep(0.1)

    def _submit(self) -> None:
        body = {"workflow": with_knob("StandinSlow", color=next(_colors), seconds=JOB_S, steps=JOB_S * 2)}
        while not self._stop.is_set():
            pod = self.pods[next(self._turn) % len(self.pods)]
            try:
                answer = requests.post(pod.url + "/run", params={"async": "1"}, json=body, timeout=10)
            except requests.ConnectionError:
                answer = None
            if answer is not None and answer.status_code == 202:
                self.open.add(answer.json()["id"])
                return
            self.resent += 1
            time.sleep(0.05)

    def _poll(self) -> None:
        for job_id in list(self.open):
            view = self._ask(f"/jobs/{job_id}")
            if view is None:
                continue
            if view.get("state") in FINAL or view.get("error", "").startswith("job_not_found"):
                self.ended[job_id] = view
                self.open.discard(job_id)

    def _ask(self, path: str) -> dict | None:
        for pod in list(self.pods):
            try:
                answer = requests.get(pod.url + path, timeout=5)
            except requests.ConnectionError:
                continue
            if answer.status_code in (200, 404):
                return answer.json()
        return None


def rolling_restart(redis: RedisServer, drain_timeout_s: str) -> dict:
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "LOG_SILENT": "1",
        "JOB_TIMEOUT_S": "60",
        "STATE_URL": redis.url,
        "STATE_PREFIX": f"rolling-{uuid.uuid4().hex[:8]}",
        "JOB_CLAIM_TIMEOUT_S": "3",
        "DRAIN_TIMEOUT_S": drain_timeout_s,
    }
    pods = [Stack("api", env).start() for _ in range(3)]
    for pod in pods:
        pod.wait_ready()
    client = Client(pods)
    restarts = []
    try:
        client.start()
        time.sleep(2 * JOB_S)  # every pod busy
        for index in range(len(pods)):
            old = pods[index]
            signalled = time.monotonic()
            old.terminate()
            code = old.exit_code(timeout=60)
            exited = time.monotonic() - signalled
            old.stop()
            pods[index] = Stack("api", env).ready()
            restarts.append((code, exited, time.monotonic() - signalled))
            time.sleep(JOB_S)  # the new pod takes work before the next restart
        client.finish(timeout=60)
    finally:
        for pod in pods:
            pod.stop()
    failed = collections.Counter(
        str(view.get("result", {}).get("error", "?")).split(":")[0]
        for view in client.ended.values()
        if view.get("state") != "completed" and "state" in view
    )
    gone = sum(1 for view in client.ended.values() if "state" not in view)
    return {
        "submitted": len(client.ended) + len(client.open),
        "completed": sum(1 for view in client.ended.values() if view.get("state") == "completed"),
        "failed": dict(failed),
        "lost": len(client.open) + gone,
        "resent": client.resent,
        "restarts": restarts,
    }


def report(name: str, outcome: dict) -> None:
    exits = [round(r[1], 1) for r in outcome["restarts"]]
    readies = [round(r[2], 1) for r in outcome["restarts"]]
    print(
        f"{name}: {outcome['submitted']} jobs submitted, {outcome['completed']} completed, "
        f"failed {sum(outcome['failed'].values())} {outcome['failed'] or ''}, lost {outcome['lost']}, "
        f"re-sent {outcome['resent']} submissions"
    )
    print(
        f"  restarts: exit codes {[r[0] for r in outcome['restarts']]}, signal -> exit {exits} s "
        f"(median {statistics.median(exits):.1f}), signal -> new pod ready {readies} s"
    )


def main() -> None:
    redis = RedisServer().start()
    try:
        drained = rolling_restart(redis, "20")
        at_once = rolling_restart(redis, "0")
    finally:
        redis.stop()
    print(f"rolling restart of 3 pods, async jobs of {JOB_S} s, {IN_FLIGHT} in flight (stand-in ComfyUI)")
    report("drain (DRAIN_TIMEOUT_S=20)", drained)
    report("baseline, stop at once (DRAIN_TIMEOUT_S=0)", at_once)
    ok = drained["lost"] == 0 and not drained["failed"]
    print(f"target with the drain: 0 lost, 0 failed -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()

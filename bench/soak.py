"""What faults cost a fleet under load (issue 44's scenario, the stand-in ComfyUI, minutes):
two pods on one real redis-server, three clients sending encrypted async jobs of ~150 ms one
after another (each waits for its job's end), and three faults: pod A's ComfyUI killed, pod B
drained by SIGTERM to its PID 1 and replaced, pod A's gunicorn worker killed.

Prints the jobs accepted, completed with the right pixels, failed by code, unanswered and
wrong, and the failures after each fault (a failure counts for the last fault before it).
Target (issue 44): 0 unanswered, 0 wrong, at most one failure per ComfyUI kill plus the jobs
the killed API process was running.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import signal
import threading
import time
import uuid

import requests

from bench.pool import ready
from client.envelope_client import open_answer, seal_request
from services.comfy import supervisor_state
from tests.redis_server import RedisServer
from tests.stack import Stack, wait_until
from tests.workflows import decode_png, with_knob

FINAL = ("completed", "failed", "cancelled")
_colors = itertools.count(1)


class Soak:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.redis = RedisServer().start()
        self.env = {
            "DRY_RUN": "0",
            "ENCRYPTION_REQUIRED": "1",
            "LOG_SILENT": "1",
            "STATE_URL": self.redis.url,
            "STATE_PREFIX": f"soak-{uuid.uuid4().hex[:8]}",
            "JOB_TIMEOUT_S": "60",
            "DRAIN_TIMEOUT_S": "30",
        }
        self.a = Stack("api", self.env).start()
        self.env["WORKER_PRIVATE_KEY_B64"] = self.a.private_key  # one key for the fleet
        self.b = Stack("api", self.env).start()
        self.pods = [self.a, self.b]
        self.lock = threading.Lock()
        self.faults: list[tuple[float, str]] = []
        self.ends: list[tuple[float, str, str | None]] = []  # (when, outcome, error code)
        self.refused = 0

    def live(self) -> list[Stack]:
        with self.lock:
            return [pod for pod in self.pods if pod.proc is not None and pod.proc.poll() is None]

    def client(self, number: int, until: float) -> None:
        with requests.Session() as session:
            while time.monotonic() < until:
                self.one_job(session, number)

    def one_job(self, session: requests.Session, number: int) -> None:
        color = next(_colors)
        workflow = with_knob("StandinSlow", color=color, seconds=0.15, steps=1)
        request, ephemeral = seal_request({"workflow": workflow}, self.a.public_key)
        pods = self.live()
        pod = pods[number % len(pods)]
        try:
            answer = session.post(pod.url + "/run", params={"async": "1"}, json=request, timeout=30)
        except requests.RequestException:
            answer = None
        if answer is None or answer.status_code != 202:
            with self.lock:
                self.refused += 1  # not accepted: the client knows to send it elsewhere
            time.sleep(0.2)
            return
        job_id, view = answer.json()["id"], {}
        limit = time.monotonic() + 120
        while time.monotonic() < limit and view.get("state") not in FINAL:
            for pod in self.live():
                try:
                    view = session.get(pod.url + f"/jobs/{job_id}", timeout=10).json()
                    break
                except (requests.RequestException, ValueError):
                    continue
            time.sleep(0.05)
        self.record(view, ephemeral, color)

    def record(self, view: dict, ephemeral: bytes, color: int) -> None:
        if view.get("state") not in FINAL:
            outcome, code = "unanswered", None
        else:
            result = open_answer(view["result"], ephemeral, self.a.public_key)
            if result.get("status") == "ok":
                pixel = decode_png(result["outputs"][0]).convert("RGB").getpixel((0, 0))
                outcome, code = ("completed" if pixel == tuple(color.to_bytes(3, "big")) else "wrong"), None
            else:
                outcome, code = "failed", str(result.get("error", "")).split(":")[0]
        with self.lock:
            self.ends.append((time.monotonic(), outcome, code))

    # the faults ------------------------------------------------------------------------------
    def fault(self, name: str) -> None:
        with self.lock:
            self.faults.append((time.monotonic(), name))
        print(f"  {time.monotonic() - self.began:5.1f} s: {name}", flush=True)

    def kill_comfyui(self, pod: Stack) -> None:
        relay = supervisor_state.rpc(pod.socket).supervisor.getProcessInfo("comfy")["pid"]
        [comfyui] = Stack.children(relay)
        self.fault("ComfyUI killed on pod A")
        os.kill(comfyui, signal.SIGKILL)

    def replace_b(self) -> None:
        self.fault("pod B drained (SIGTERM to PID 1) and replaced")
        old = self.b
        old.terminate()
        old.exit_code(timeout=60)
        new = Stack("api", self.env).start()
        with self.lock:
            self.pods = [self.a, new]
            self.b = new
        old.stop()
        wait_until(lambda: ready(new, 1), 120, "the new pod B ready")

    def kill_api_worker(self, pod: Stack) -> None:
        _master, workers = pod.api_processes()
        self.fault("pod A's gunicorn worker killed")
        for worker in workers:
            os.kill(worker, signal.SIGKILL)

    def run(self) -> None:
        for pod in self.pods:
            wait_until(lambda pod=pod: ready(pod, 1), 120, "pods ready")
        self.began = time.monotonic()
        until = self.began + self.seconds
        clients = [threading.Thread(target=self.client, args=(k, until)) for k in range(3)]
        for thread in clients:
            thread.start()
        for at, fault in (
            (0.15, lambda: self.kill_comfyui(self.a)),
            (0.35, self.replace_b),
            (0.70, lambda: self.kill_api_worker(self.a)),
        ):
            time.sleep(max(0.0, self.began + at * self.seconds - time.monotonic()))
            fault()
        for thread in clients:
            thread.join()
        self.report()

    def report(self) -> None:
        counted = collections.Counter(outcome for _, outcome, _ in self.ends)
        codes = collections.Counter(code for _, outcome, code in self.ends if outcome == "failed")
        print(
            f"{self.seconds:g} s, 3 clients: accepted {len(self.ends)}, completed {counted['completed']}, "
            f"failed {counted['failed']} {dict(codes)}, unanswered {counted['unanswered']}, "
            f"wrong results {counted['wrong']} (not accepted, sent again: {self.refused})"
        )
        for index, (at, name) in enumerate(self.faults):
            upto = self.faults[index + 1][0] if index + 1 < len(self.faults) else float("inf")
            failed = collections.Counter(
                code for when, outcome, code in self.ends if outcome == "failed" and at <= when < upto
            )
            print(f"  after '{name}': failed {sum(failed.values())} {dict(failed)}")

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()
        self.redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    soak = Soak(args.seconds)
    try:
        soak.run()
    finally:
        soak.stop()


if __name__ == "__main__":
    main()

"""SIGTERM to the container while a serverless job runs: the worker drains. Off RunPod the local
queue refuses new jobs and the one running is finished and its result served; on RunPod (a
RunPod-style job API run by the test) the SDK takes nothing more, delivers the job it runs and
keeps its heartbeat until then. SIGTERM goes to the entrypoint only, as the platform sends it."""

import shutil
import tempfile
import threading
import time

import requests
from werkzeug.serving import make_server

from services.container.entrypoint import local_runpod_environment
from services.core import config
from services.handler.local_queue import create_app
from tests.stack import Stack, free_port, wait_until
from tests.workflows import with_knob


def slow(seconds, color=0):
    return {"input": {"workflow": with_knob("StandinSlow", color=color, seconds=seconds, steps=seconds * 2)}}


def comfy_running(stack):
    """What ComfyUI runs now; nothing while it does not listen yet."""
    try:
        return requests.get(f"http://127.0.0.1:{stack.comfy_port}/queue", timeout=5).json()["queue_running"]
    except requests.ConnectionError:
        return []


def test_the_local_queue_drains_like_a_pod():
    stack = Stack("serverless", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "DRAIN_TIMEOUT_S": "60"}).ready()
    try:
        job = requests.post(f"{stack.url}/v2/LOCAL/run", json=slow(3), timeout=10).json()
        wait_until(lambda: comfy_running(stack) != [], 20, "the prompt to run")
        stack.terminate()
        wait_until(lambda: "draining" in stack.log, 10, "the drain")
        refused = requests.post(f"{stack.url}/v2/LOCAL/runsync", json=slow(1), timeout=10)
        assert refused.status_code == 503 and refused.json()["error"].startswith("draining")
        assert refused.headers["Retry-After"] == "5"

        def status():
            return requests.get(f"{stack.url}/v2/LOCAL/status/{job['id']}", timeout=5).json()["status"]

        wait_until(lambda: status() == "COMPLETED", 30, "the job's result")
        fetched = time.monotonic()
        assert stack.exit_code(timeout=30) == 0
        assert time.monotonic() - fetched < 20  # not at DRAIN_TIMEOUT_S
    finally:
        stack.stop()


class RunPodStandIn:
    """RunPod's job API for one worker: the local queue's app (the same protocol), served here
    with its own run folder, recording when the worker pinged."""

    def __init__(self) -> None:
        self.port = free_port()
        self.token = "worker-token"
        self.run_dir = tempfile.mkdtemp(prefix="runpod-")
        settings = config.load(
            {"ENCRYPTION_REQUIRED": "0", "RUN_DIR": self.run_dir, "API_PORT": str(self.port)}
        )
        app = create_app(settings, self.token)
        self.queue = app.extensions["local_queue"].queue
        self.pings: list[float] = []

        def recording(environ, start_response):
            if "/ping/" in environ.get("PATH_INFO", ""):
                self.pings.append(time.time())
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", self.port, recording, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def worker_env(self) -> dict[str, str]:
        return {
            **local_runpod_environment(self.port),
            "RUNPOD_AI_API_KEY": self.token,
            "RUNPOD_POD_ID": "stand-in-pod",
            "RUNPOD_PING_INTERVAL": "1000",
        }

    def stop(self) -> None:
        self.server.shutdown()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def test_on_runpod_the_job_in_flight_is_delivered_and_nothing_more_is_taken():
    runpod = RunPodStandIn()
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "DRAIN_TIMEOUT_S": "60", **runpod.worker_env()}
    stack = Stack("serverless", env).start(wait_for=("handler", "comfy"))
    try:
        assert stack.programs()["localqueue"] == "STOPPED"  # on RunPod: its queue, not ours
        first = runpod.queue.submit(slow(4)["input"], sync=False)
        second = runpod.queue.submit(slow(1, color=1)["input"], sync=False)  # queued behind the first
        third = runpod.queue.submit(slow(1, color=2)["input"], sync=False)
        wait_until(lambda: second.status == "IN_PROGRESS", 60, "the worker to take two jobs")
        wait_until(lambda: comfy_running(stack) != [], 20, "the first prompt to run")
        stack.terminate()
        signalled = time.time()
        assert stack.exit_code(timeout=40) == 0
        for job in (first, second):  # delivered before the worker exited
            assert job.status == "COMPLETED" and job.output["outputs"], job.view()
        assert third.status == "IN_QUEUE"  # left in RunPod's queue for another worker
        assert any(signalled < ping < first.finished for ping in runpod.pings), "no heartbeat in the drain"
    finally:
        stack.stop()
        runpod.stop()

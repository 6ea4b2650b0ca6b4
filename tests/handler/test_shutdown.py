"""SIGTERM to the container while a serverless job runs: the job is finished and reported, then
everything stops with exit code 0 inside the platform's 10 s."""

import time

import requests

from tests.stack import Stack, wait_until
from tests.workflows import with_knob


def test_sigterm_drains_the_job_in_flight():
    stack = Stack("serverless", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}).ready()
    job = requests.post(
        f"{stack.url}/v2/LOCAL/run",
        json={"input": {"workflow": with_knob("StandinSlow", seconds=3, steps=6)}},
        timeout=10,
    ).json()
    comfy_queue = f"http://127.0.0.1:{stack.comfy_port}/queue"
    wait_until(
        lambda: requests.get(comfy_queue, timeout=5).json()["queue_running"] != [], 20, "the prompt to run"
    )
    started = time.monotonic()
    code = stack.stop(timeout=15)
    elapsed = time.monotonic() - started
    assert code == 0 and elapsed < 10
    assert f"job {job['id']} COMPLETED" in stack.log

"""POST /drain on a live pod: new work is refused with 503 `draining` and Retry-After before its
envelope is opened, a job already running gets its answer, probes say so, DELETE /drain ends it."""

import threading

import pytest
import requests

from client.envelope_client import seal_request
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

KEY = "drain-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def pod():
    with Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": KEY}).ready() as stack:
        yield stack


def running_in_comfyui(pod):
    return requests.get(f"http://127.0.0.1:{pod.comfy_port}/queue", timeout=5).json()["queue_running"] != []


def test_a_drain_refuses_new_work_finishes_the_running_job_and_ends_on_request(pod):
    answers = []
    workflow = with_knob("StandinSlow", color=21, seconds=10, steps=10)
    running = threading.Thread(
        target=lambda: answers.append(
            requests.post(pod.url + "/run", json={"workflow": workflow}, headers=AUTH, timeout=120)
        )
    )
    running.start()
    wait_until(lambda: running_in_comfyui(pod), 30, "the long job to run in ComfyUI")
    envelope, _ = seal_request({"workflow": empty_image(8, 8, 5)}, pod.public_key)
    try:
        started = requests.post(pod.url + "/drain", headers=AUTH, timeout=10)
        assert started.status_code == 200 and started.json()["draining"] is True
        assert running_in_comfyui(pod)  # the drain began while the job ran

        ready = requests.get(pod.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["draining"] is True
        health = requests.get(pod.url + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["draining"] is True
        assert (
            "comfy_worker_draining 1.0" in requests.get(pod.url + "/metrics", headers=AUTH, timeout=10).text
        )

        refused = [
            requests.post(pod.url + "/run", json=envelope, headers=AUTH, timeout=10),
            requests.post(
                pod.url + "/run?async=1", json={"workflow": empty_image()}, headers=AUTH, timeout=10
            ),
            requests.post(pod.url + "/v2/x/runsync", json={"input": envelope}, headers=AUTH, timeout=10),
            requests.post(
                pod.url + "/download", json=[{"type": "vae", "url": "http://x/v"}], headers=AUTH, timeout=10
            ),
        ]
        for answer in refused:
            assert answer.status_code == 503 and answer.json()["error"].startswith("draining"), answer.text
            assert answer.headers["Retry-After"] == "5"

        running.join(120)
        assert answers[0].status_code == 200 and answers[0].json()["status"] == "ok"
    finally:
        ended = requests.delete(pod.url + "/drain", headers=AUTH, timeout=10)
    assert ended.status_code == 200 and ended.json()["draining"] is False
    assert requests.get(pod.url + "/readyz", timeout=10).json()["draining"] is False
    # the envelope refused during the drain was never opened: it is no replay now
    again = requests.post(pod.url + "/run", json=envelope, headers=AUTH, timeout=60)
    assert again.status_code == 200 and again.json()["encrypted"] is True


def test_drain_is_behind_the_api_key(pod):
    assert requests.post(pod.url + "/drain", timeout=10).status_code == 401
    assert requests.get(pod.url + "/readyz", timeout=10).status_code == 200

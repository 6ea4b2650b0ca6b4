"""POST /drain on a live pod: new work is refused with 503 `draining` and Retry-After before its
envelope is opened, a job already running gets its answer, probes say so, DELETE /drain ends it."""

import threading
import time

import pytest
import requests

from client.envelope_client import seal_request
from services.api.app import create_app
from services.core import config, drain
from services.jobs import envelopes
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
            requests.post(pod.url + "/v2/x/run", json={"input": envelope}, headers=AUTH, timeout=10),
            requests.post(pod.url + "/templates/noise-card/run", json={}, headers=AUTH, timeout=10),
            requests.post(pod.url + "/templates/noise-card/run", json=envelope, headers=AUTH, timeout=10),
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


CONTROL = {  # POST routes that act on work already accepted, or on the pod: never refused
    "/drain",
    "/comfy/restart",
    "/comfy/free",
    "/jobs/<job_id>/cancel",
    "/v2/<endpoint_id>/cancel/<job_id>",
    "/v2/<endpoint_id>/status/<job_id>",
}


def test_every_route_that_takes_work_is_refused_while_draining_and_a_signal_s_drain_stays(tmp_path):
    """Every POST route but the control ones, as the app declares them (a route added later
    is covered without a list kept by hand)."""
    private, _ = envelopes.keypair()
    settings = config.load(
        {"WORKER_PRIVATE_KEY_B64": private, "LAUNCH_MODE": "api", "DRY_RUN": "1", "RUN_DIR": str(tmp_path)}
    )
    app = create_app(settings)
    client = app.test_client()
    drain.begin(settings.run_layout)
    posts = sorted(r.rule for r in app.url_map.iter_rules() if "POST" in r.methods)
    work = [rule for rule in posts if rule not in CONTROL]
    assert {"/run", "/download", "/templates/<name>/run", "/v2/<endpoint_id>/run"} <= set(work)
    for rule in work:
        url = rule.replace("<name>", "noise-card").replace("<endpoint_id>", "x").replace("<job_id>", "j")
        answer = client.post(url, json={})
        assert answer.status_code == 503 and answer.get_json()["error"].startswith("draining"), rule
    assert client.delete("/drain").status_code == 200  # POST /drain's drain ends on request
    drain.begin(settings.run_layout, deadline=time.time() + 60)  # what SIGTERM writes
    refused = client.delete("/drain")
    assert refused.status_code == 409 and refused.get_json()["error"].startswith("not_available")
    assert drain.since(settings.run_layout) is not None

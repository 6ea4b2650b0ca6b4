"""A key's limits hold across a fleet: two pods on one real Redis count its jobs together, and
its jobs stay its own on every pod."""

import uuid

import requests

from services.jobs import access
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

TOKENS = {"limited": access.new_token(), "other": access.new_token()}


def auth(name):
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def run_async(pod, name, workflow):
    return requests.post(
        pod.url + "/run", params={"async": "1"}, json={"workflow": workflow}, headers=auth(name), timeout=30
    )


def state(pod, name, job_id):
    return requests.get(pod.url + f"/jobs/{job_id}", headers=auth(name), timeout=10)


def test_a_key_s_job_limit_holds_across_two_pods_and_its_jobs_are_its_own_on_both(redis_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(
        f"limited sha256:{access.hash_of(TOKENS['limited'])} jobs jobs=1\n"
        f"other sha256:{access.hash_of(TOKENS['other'])} jobs\n"
    )
    fleet = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "STATE_URL": redis_server.url,
        "STATE_PREFIX": f"quota-{uuid.uuid4().hex[:8]}",
        "API_KEYS_FILE": str(keys),
    }
    first, second = Stack("api", fleet).start(), Stack("api", fleet).start()
    try:
        for pod in (first, second):
            pod.wait_ready()
        running = run_async(first, "limited", with_knob("StandinSlow", color=7, seconds=30, steps=30))
        assert running.status_code == 202
        job_id = running.json()["id"]
        wait_until(lambda: state(second, "limited", job_id).json()["state"] == "running", 20, "it to run")
        refused = run_async(second, "limited", empty_image(8, 8))
        assert refused.status_code == 429 and refused.json()["error"].startswith("quota_exceeded")
        assert int(refused.headers["Retry-After"]) > 0
        assert state(second, "other", job_id).status_code == 404
        cancel = requests.post(second.url + f"/jobs/{job_id}/cancel", headers=auth("other"), timeout=10)
        assert cancel.status_code == 404
        assert state(first, "limited", job_id).json()["state"] == "running"
        requests.post(second.url + f"/jobs/{job_id}/cancel", headers=auth("limited"), timeout=10)
        wait_until(lambda: state(first, "limited", job_id).json()["state"] == "cancelled", 30, "the cancel")
        again = run_async(second, "limited", empty_image(8, 8))  # the slot came back, fleet-wide
        assert again.status_code == 202, again.text
        done = again.json()["id"]
        wait_until(lambda: state(first, "limited", done).json()["state"] == "completed", 30, "it to end")
    finally:
        first.stop()
        second.stop()

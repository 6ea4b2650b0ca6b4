"""A key's limits hold across a fleet: two pods on one real Redis count its jobs together, and
its jobs stay its own on every pod; a slot lives as long as its job, whatever its age, and a dead
API process's slots go back with its jobs."""

import os
import time
import uuid

import pytest
import requests

from services.core import config, errors
from services.jobs import access
from services.jobs.fleet import SharedJobs, release
from services.jobs.fleet.state_store import StateStore
from services.jobs.quotas import Quotas
from tests.pipelines import pipeline
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


# A slot's life, in this process (DRY_RUN jobs, the real Redis for a fleet) -----------------------
LIMITED = access.Key("limited", frozenset({"jobs"}), max_jobs=1)
DRY_JOB = {"workflow": {"1": {"class_type": "SaveImage", "inputs": {}}}}


def test_a_slot_is_held_as_long_as_its_job_whatever_its_age():
    """JOB_KEEP_S is how long an ended job's record is kept, not how long a slot lives."""
    quotas = Quotas(config.load({"ENCRYPTION_REQUIRED": "0", "JOB_KEEP_S": "1"}))
    slot = quotas.take_job(LIMITED)
    time.sleep(1.5)  # past JOB_KEEP_S: the age itself is what is tried
    with pytest.raises(errors.QuotaExceeded):
        quotas.take_job(LIMITED)
    slot.give_back()
    assert quotas.take_job(LIMITED).id


def test_in_a_fleet_a_queued_job_keeps_its_slot_and_a_dead_process_s_sync_slots_go_back(redis_server):
    prefix = f"quota-{uuid.uuid4().hex[:8]}"
    settings = config.load(
        {
            "ENCRYPTION_REQUIRED": "0",
            "DRY_RUN": "1",
            "STATE_URL": redis_server.url,
            "STATE_PREFIX": prefix,
            "JOB_KEEP_S": "1",
            "JOB_CLAIM_TIMEOUT_S": "60",  # its next proof of life is 20 s away
        }
    )
    store = StateStore(settings)
    quotas = Quotas(settings, store)
    pod = SharedJobs(settings, pipeline(settings, shared=store), store, lambda own: 0, quotas)
    key = access.Key("limited", frozenset({"jobs"}), max_jobs=2)
    try:
        queued = pod.start(DRY_JOB, owner="limited", slot=quotas.take_job(key))  # no pod takes it
        quotas.take_job(key)  # a sync job's, held by this API process
        time.sleep(1.5)  # past JOB_KEEP_S
        with pytest.raises(errors.QuotaExceeded):
            quotas.take_job(key)
        release(store, settings, os.getpid())  # as gunicorn's master does when this process died
        other = Quotas(settings, store)  # another pod's, which lives
        other.held_by("other-pod")
        store.redis.set(store.names.pod("other-pod"), b"1", ex=60)
        assert other.take_job(key).id  # the dead process's sync slot went back
        with pytest.raises(errors.QuotaExceeded):  # the queued job's did not
            other.take_job(key)
        pod.cancel(queued.id, "limited")
        assert other.take_job(key).id  # it ended: its slot is back
    finally:
        pod.close()

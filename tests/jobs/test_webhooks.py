"""Webhooks against a real receiver that verifies every call with the `standardwebhooks` library:
a pod (real gunicorn, supervisord and the ComfyUI stand-in) with two signing keys and a quick
retry schedule, a DRY_RUN pod that allows no private address, the serverless local queue, and
two pods on one Redis."""

import base64
import os
import uuid

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from services.core import config, errors
from services.jobs import webhooks
from tests.pod_jobs import status, submit
from tests.stack import Stack, wait_until
from tests.webhook_receiver import Receiver
from tests.workflows import decode_png, empty_image, with_knob

SECRETS = ["whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
ENV = {
    "DRY_RUN": "0",
    "ENCRYPTION_REQUIRED": "0",
    "WEBHOOK_SECRET": " ".join(SECRETS),
    "WEBHOOK_RETRY_S": "0,1.5,3",
    "WEBHOOK_TIMEOUT_S": "3",
    "ALLOW_PRIVATE_WEBHOOKS": "1",
}


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver(SECRETS)
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def pod():
    with Stack("api", ENV).ready() as pod:
        yield pod


def delivered(pod, job_id, timeout=30):
    """The job's record once its webhook is no longer pending."""
    wait_until(
        lambda: status(pod, job_id).get("webhook", {}).get("state") not in (None, "pending"),
        timeout,
        "the webhook",
    )
    return status(pod, job_id)


def test_a_job_s_end_is_posted_once_signed_with_each_key(pod, receiver):
    payload = {"workflow": empty_image(8, 8, 0x00FF00), "webhook": receiver.url("/once")}
    job_id = submit(pod, payload)
    record = delivered(pod, job_id)
    assert record["webhook"] == {"state": "delivered", "attempts": 1, "last_status": 200}
    [call] = receiver.to("/once")
    body = call.verified
    assert not isinstance(body, Exception), body
    assert body["type"] == "job.completed" and call.headers["webhook-id"] == job_id
    assert body["data"]["id"] == job_id and body["data"]["state"] == "completed"
    assert body["data"]["result"] == record["result"]  # what polling returns
    assert len(call.headers["webhook-signature"].split()) == 2  # one signature per key
    assert receiver.url("/once") not in pod.log


def test_a_failing_receiver_is_tried_again_with_the_same_id_and_a_fresh_signature(pod, receiver):
    receiver.scripts["/flaky"] = [500, 500, 200]
    job_id = submit(
        pod, {"workflow": with_knob("StandinFail", message="no"), "webhook": receiver.url("/flaky")}
    )
    assert delivered(pod, job_id)["webhook"] == {"state": "delivered", "attempts": 3, "last_status": 200}
    calls = receiver.to("/flaky")
    assert [c.status for c in calls] == [500, 500, 200]
    assert {c.headers["webhook-id"] for c in calls} == {job_id}
    assert all(not isinstance(c.verified, Exception) for c in calls)
    stamps = [int(c.headers["webhook-timestamp"]) for c in calls]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]  # each attempt signed when sent
    assert calls[0].verified["type"] == "job.failed"
    assert calls[0].verified["data"]["result"]["error"].startswith("execution_failed")


def test_410_stops_and_a_redirect_is_not_followed(pod, receiver):
    receiver.scripts["/gone"] = [410]
    receiver.scripts["/moved"] = [("redirect", "/elsewhere")]
    gone = submit(pod, {"workflow": empty_image(8, 8, 1), "webhook": receiver.url("/gone")})
    moved = submit(pod, {"workflow": empty_image(8, 8, 2), "webhook": receiver.url("/moved")})
    assert delivered(pod, gone)["webhook"] == {"state": "failed", "attempts": 1, "last_status": 410}
    assert delivered(pod, moved)["webhook"] == {"state": "failed", "attempts": 1, "last_status": 302}
    assert len(receiver.to("/gone")) == 1 and len(receiver.to("/moved")) == 1
    assert receiver.to("/elsewhere") == []


def test_a_hanging_receiver_holds_back_no_job_no_cancel_and_no_probe(pod, receiver):
    receiver.scripts["/hang"] = [("hang", 30)]
    hung = submit(pod, {"workflow": empty_image(8, 8, 3), "webhook": receiver.url("/hang")})
    wait_until(lambda: receiver.to("/hang") != [], 30, "the receiver to be called")
    assert requests.get(pod.url + "/healthz", timeout=5).status_code == 200
    quick = requests.post(pod.url + "/run", json={"workflow": empty_image(8, 8, 4)}, timeout=30)
    assert quick.status_code == 200
    slow = submit(pod, {"workflow": with_knob("StandinSlow", color=5, seconds=30, steps=30)})
    assert requests.post(pod.url + f"/jobs/{slow}/cancel", timeout=5).status_code == 200
    assert status(pod, hung)["webhook"]["state"] == "pending"  # all that while the receiver hung
    wait_until(
        lambda: status(pod, hung)["webhook"]["attempts"] >= 2, 30, "the attempt to be cut at the timeout"
    )
    assert status(pod, hung)["webhook"]["last_status"] is None


def test_an_encrypted_job_s_webhook_carries_only_its_sealed_result(pod, receiver):
    marker = f"secret-prompt-{uuid.uuid4().hex}"
    payload = {"workflow": empty_image(8, 6, 0x0000FF, prefix=marker), "webhook": receiver.url("/sealed")}
    sealed, ephemeral = seal_request(payload, pod.public_key)
    job_id = submit(pod, sealed)
    delivered(pod, job_id)
    [call] = receiver.to("/sealed")
    assert marker not in call.body and "/sealed" not in call.body and "outputs" not in call.body
    result = open_answer(call.verified["data"]["result"], ephemeral, pod.public_key)
    assert decode_png(result["outputs"][0]).size == (8, 6)
    assert receiver.url("/sealed") not in pod.log


def test_an_oversized_result_is_left_out_and_still_fetchable(pod, receiver):
    noise = {
        "1": {"class_type": "StandinNoise", "inputs": {"width": 700, "height": 700}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "noise"}},
    }
    job_id = submit(pod, {"workflow": noise, "webhook": receiver.url("/big")})
    record = delivered(pod, job_id)
    [call] = receiver.to("/big")
    assert call.verified["data"]["result_omitted"] == "too_large" and "result" not in call.verified["data"]
    assert len(call.body) < 2048 and record["result"]["outputs"][0]["size"] > 1024 * 1024


def test_a_private_address_is_refused_at_submission_unless_allowed(receiver):
    with Stack("api", {"ENCRYPTION_REQUIRED": "0"}).ready() as strict:
        url = receiver.url("/private")
        answer = requests.post(
            strict.url + "/run",
            params={"async": "1"},
            json={"workflow": empty_image(), "webhook": url},
            timeout=10,
        )
        assert answer.status_code == 400 and answer.json()["error"].startswith("invalid_webhook")
        assert url not in answer.text and url not in strict.log
        bad = requests.post(
            strict.url + "/run",
            params={"async": "1"},
            json={"workflow": empty_image(), "webhook": 7},
            timeout=10,
        )
        assert bad.status_code == 400 and bad.json()["error"].startswith("invalid_webhook")
    assert receiver.to("/private") == []
    allowed = config.load({"ENCRYPTION_REQUIRED": "0", "ALLOW_PRIVATE_WEBHOOKS": "1"})
    assert webhooks.requested({"webhook": url}, allowed) == url
    with pytest.raises(errors.InvalidWebhook):
        webhooks.requested(
            {"webhook": "http://169.254.169.254/latest"}, config.load({"ENCRYPTION_REQUIRED": "0"})
        )


def test_the_local_queue_posts_runpod_s_status_object_to_runpod_s_webhook(receiver):
    env = {**ENV, "DRY_RUN": "1"}
    with Stack("serverless", env).ready() as worker:
        answer = requests.post(
            worker.url + "/v2/LOCAL/run",
            json={"input": {"workflow": empty_image()}, "webhook": receiver.url("/runpod")},
            timeout=10,
        ).json()
        wait_until(lambda: receiver.to("/runpod") != [], 30, "RunPod's webhook")
        [call] = receiver.to("/runpod")
        assert call.verified["id"] == answer["id"] and call.verified["status"] == "COMPLETED"
        assert call.verified["output"]["dry_run"] is True
        inner = requests.post(
            worker.url + "/v2/LOCAL/run",
            json={"input": {"workflow": empty_image(), "webhook": receiver.url("/inner")}},
            timeout=10,
        ).json()
        wait_until(lambda: receiver.to("/inner") != [], 30, "the job's own webhook")
        [own] = receiver.to("/inner")
        assert own.verified["type"] == "job.completed" and own.verified["data"]["id"] == inner["id"]
        assert own.verified["data"]["status"] == "COMPLETED"


def test_a_pending_delivery_of_a_killed_pod_is_made_by_another(redis_server, receiver):
    receiver.scripts["/fleet"] = [503, 200]
    fleet = {
        **ENV,
        "STATE_URL": redis_server.url,
        "STATE_PREFIX": f"hooks-{uuid.uuid4().hex[:8]}",
        "JOB_CLAIM_TIMEOUT_S": "2",
        "WEBHOOK_RETRY_S": "0,60",
    }
    first = Stack("api", fleet).ready()
    other = None
    try:
        job_id = submit(first, {"workflow": empty_image(8, 8, 9), "webhook": receiver.url("/fleet")})
        wait_until(lambda: len(receiver.to("/fleet")) == 1, 30, "the first attempt")
        other = Stack("api", {**fleet, "WORKER_PRIVATE_KEY_B64": first.private_key}).ready()
        first.kill()  # its next attempt was a minute away
        record = delivered(other, job_id)
        assert record["webhook"] == {"state": "delivered", "attempts": 2, "last_status": 200}
        calls = receiver.to("/fleet")
        assert [c.status for c in calls] == [503, 200] and {c.headers["webhook-id"] for c in calls} == {
            job_id
        }
        assert not isinstance(calls[1].verified, Exception)
    finally:
        first.stop()
        if other is not None:
            other.stop()

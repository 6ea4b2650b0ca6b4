"""The local RunPod-style queue as a Flask app, in-process: RunPod's protocol as the pod API
speaks it (statuses, Bearer auth, the body cap), and the control plane the SDK polls. The real
SDK worker loop against it is tests/handler/test_worker_loop.py."""

import base64
import os

import pytest

from services.core import config
from services.handler import job_queue
from services.handler.local_queue import create_app
from services.jobs import access
from tests.stack import wait_until
from tests.webhook_receiver import Receiver

KEY = "queue-key"
TOKEN = "sdk-token"
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(tmp_path):
    settings = config.load(
        {"ENCRYPTION_REQUIRED": "0", "API_KEY": KEY, "MAX_REQUEST_MB": "1", "RUN_DIR": str(tmp_path)}
    )
    return create_app(settings, TOKEN).test_client()


def test_a_body_over_max_request_mb_is_refused_with_a_code(client):
    big = {"input": {"workflow": {"1": {"class_type": "X", "inputs": {"blob": "A" * (2 * 1024 * 1024)}}}}}
    answer = client.post("/v2/LOCAL/run", json=big, headers=BEARER)
    assert answer.status_code == 413
    assert answer.get_json()["error"].startswith("body_too_large: the limit is 1 MB (MAX_REQUEST_MB)")
    assert client.get("/v2/LOCAL/health", headers=BEARER).get_json()["jobs"]["inQueue"] == 0


def test_only_a_bearer_token_is_accepted_as_on_the_pod_api(client):
    job = {"input": {"workflow": {}}}
    assert client.post("/v2/LOCAL/run", json=job, headers={"Authorization": KEY}).status_code == 401
    refused = client.post("/v2/LOCAL/run", json=job)
    assert refused.status_code == 401 and refused.get_json()["error"].startswith("unauthorized")
    assert client.get("/metrics").status_code == 401
    assert client.post("/v2/LOCAL/run", json=job, headers=BEARER).get_json()["status"] == "IN_QUEUE"


def test_a_job_goes_through_the_statuses_of_runpod(client):
    job = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}, headers=BEARER).get_json()
    taken = client.get("/worker/job-take/w1?gpu=CPU", headers={"Authorization": TOKEN}).get_json()
    assert taken == {"id": job["id"], "input": {"workflow": {}}}
    status = client.get(f"/v2/LOCAL/status/{job['id']}", headers=BEARER).get_json()
    assert status["status"] == "IN_PROGRESS"
    result = {"error": "execution_failed: node 2", "output": {}}
    client.post(f"/worker/job-done/w1/{job['id']}?gpu=CPU", json=result, headers={"Authorization": TOKEN})
    status = client.get(f"/v2/LOCAL/status/{job['id']}", headers=BEARER).get_json()
    assert status["status"] == "FAILED" and status["error"] == "execution_failed: node 2"


def test_the_sdk_may_post_a_result_larger_than_the_request_cap(client):
    job = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}, headers=BEARER).get_json()
    client.get("/worker/job-take/w1", headers={"Authorization": TOKEN})
    output = {"output": {"status": "ok", "data": "A" * (3 * 1024 * 1024)}}  # under MAX_RESULT_MB
    done = client.post(f"/worker/job-done/w1/{job['id']}", json=output, headers={"Authorization": TOKEN})
    assert done.status_code == 200
    status = client.get(f"/v2/LOCAL/status/{job['id']}", headers=BEARER).get_json()
    assert status["status"] == "COMPLETED" and len(status["output"]["data"]) == 3 * 1024 * 1024


def test_the_control_plane_needs_the_sdks_token_and_unknown_jobs_are_404(client):
    assert client.get("/worker/job-take/w1").status_code == 401
    assert client.get("/worker/job-take/w1", headers={"Authorization": TOKEN}).status_code == 204
    missing = client.get("/v2/LOCAL/status/nope", headers=BEARER)
    assert missing.status_code == 404 and missing.get_json()["error"].startswith("job_not_found")
    assert client.get("/v2/OTHER/health", headers=BEARER).status_code == 404


def pieces(settings_dir) -> list[str]:
    """The work a drain would wait for (services.core.in_hand)."""
    return os.listdir(os.path.join(settings_dir, "work"))


def finish(client, job_id):
    worker = {"Authorization": TOKEN}
    assert client.get("/worker/job-take/w1", headers=worker).get_json()["id"] == job_id
    client.post(f"/worker/job-done/w1/{job_id}", json={"output": {"status": "ok"}}, headers=worker)


def test_a_job_is_let_go_once_its_end_was_told_by_stream_webhook_or_its_record_dropped(tmp_path, monkeypatch):
    """A drain waits for a job until its end reached someone: its pieces leaked for jobs
    followed by webhook or /stream, for an expired /runsync, and for pruned jobs."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = Receiver([secret])
    settings = config.load(
        {
            "ENCRYPTION_REQUIRED": "0",
            "RUN_DIR": str(tmp_path),
            "ALLOW_PRIVATE_WEBHOOKS": "1",
            "WEBHOOK_SECRET": secret,
            "WEBHOOK_RETRY_S": "0",
        }
    )
    client = create_app(settings, TOKEN).test_client()
    streamed = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}).get_json()["id"]
    finish(client, streamed)
    assert len(pieces(tmp_path)) == 1
    assert client.post(f"/v2/LOCAL/stream/{streamed}").get_json()["status"] == "COMPLETED"
    assert pieces(tmp_path) == []

    hooked = {"input": {"workflow": {}}, "webhook": receiver.url("/hook")}
    finish(client, client.post("/v2/LOCAL/run", json=hooked).get_json()["id"])
    wait_until(lambda: receiver.calls and pieces(tmp_path) == [], 10, "the webhook delivered, nothing held")

    expired = client.post("/v2/LOCAL/runsync?wait=1000", json={"input": {"workflow": {}}}).get_json()
    assert expired["status"] == "IN_QUEUE"
    finish(client, expired["id"])
    assert len(pieces(tmp_path)) == 1  # its caller may still poll /status, for RunPod's minute
    monkeypatch.setitem(job_queue.KEEP_S, "sync", 0.0)
    client.get("/worker/job-take/w1", headers={"Authorization": TOKEN})  # the SDK's next poll
    assert client.get(f"/v2/LOCAL/status/{expired['id']}").status_code == 404
    assert pieces(tmp_path) == []
    receiver.stop()


def test_an_unexpected_error_is_a_500_with_a_code_not_a_missing_route(client, monkeypatch):
    local = client.application.extensions["local_queue"]
    monkeypatch.setattr(local.queue, "health", lambda: 1 / 0)
    answer = client.get("/v2/LOCAL/health", headers=BEARER)
    assert answer.status_code == 500
    assert answer.get_json() == {"error": "internal_error: unexpected server error"}
    assert client.put("/v2/LOCAL/health", headers=BEARER).status_code == 405


def test_named_keys_scope_the_queue_and_each_sees_only_its_jobs(tmp_path):
    tokens = {name: access.new_token() for name in ("a", "b", "watch")}
    lines = {"a": "jobs jobs=1", "b": "jobs", "watch": "metrics"}
    (tmp_path / "keys").write_text(
        "".join(f"{n} sha256:{access.hash_of(t)} {lines[n]}\n" for n, t in tokens.items())
    )
    settings = config.load(
        {"ENCRYPTION_REQUIRED": "0", "API_KEYS_FILE": str(tmp_path / "keys"), "RUN_DIR": str(tmp_path)}
    )
    client = create_app(settings, TOKEN).test_client()
    key = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
    job = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}, headers=key["a"]).get_json()
    assert job["status"] == "IN_QUEUE"
    limited = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}, headers=key["a"])
    assert limited.status_code == 429 and limited.headers["Retry-After"]
    for path in (
        f"/v2/LOCAL/status/{job['id']}",
        f"/v2/LOCAL/stream/{job['id']}",
        f"/v2/LOCAL/cancel/{job['id']}",
    ):
        assert client.post(path, headers=key["b"]).status_code == 404, path
    assert client.get(f"/v2/LOCAL/status/{job['id']}", headers=key["a"]).get_json()["status"] == "IN_QUEUE"
    refused = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}, headers=key["watch"])
    assert refused.status_code == 403 and "'jobs'" in refused.get_json()["error"]
    assert client.get("/metrics", headers=key["a"]).status_code == 403
    page = client.get("/metrics", headers=key["watch"]).get_data(as_text=True)
    assert 'comfy_worker_requests_total{key_name="watch",outcome="forbidden"} 1.0' in page
    assert client.post(f"/v2/LOCAL/cancel/{job['id']}", headers=key["a"]).get_json()["status"] == "CANCELLED"
    again = client.post("/v2/LOCAL/run", json={"input": {"workflow": {}}}, headers=key["a"])
    assert again.get_json()["status"] == "IN_QUEUE"  # the cancelled job gave its slot back

"""The local RunPod-style queue as a Flask app, in-process: RunPod's protocol as the pod API
speaks it (statuses, Bearer auth, the body cap), and the control plane the SDK polls. The real
SDK worker loop against it is tests/handler/test_worker_loop.py."""

import pytest

from services.core import config
from services.handler.local_queue import create_app

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

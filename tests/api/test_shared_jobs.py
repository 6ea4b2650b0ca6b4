"""Several pods acting as one endpoint through a real Redis (STATE_URL): real supervisord stacks
with the ComfyUI stand-in, one Redis for the module. The pods share the worker key, as a fleet
behind one endpoint does."""

import uuid

import pytest
import redis
import requests

from client.envelope_client import open_answer, seal_request
from tests.stack import Stack, wait_until
from tests.workflows import invert_upload, png_b64, with_knob

CLAIM_S = 2.0


def fleet_env(redis_server, prefix, key=None):
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "JOB_TIMEOUT_S": "60",
        "STATE_URL": redis_server.url,
        "STATE_PREFIX": prefix,
        "JOB_CLAIM_TIMEOUT_S": str(CLAIM_S),
    }
    if key:
        env["WORKER_PRIVATE_KEY_B64"] = key
    return env


@pytest.fixture(scope="module")
def prefix():
    return f"fleet-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def pods(redis_server, prefix):
    first = Stack("api", fleet_env(redis_server, prefix)).start()
    second = Stack("api", fleet_env(redis_server, prefix, first.private_key)).start()
    try:
        for pod in (first, second):
            pod.wait_ready()
        yield first, second
    finally:
        first.stop()
        second.stop()


def submit(pod, payload):
    answer = requests.post(pod.url + "/run", params={"async": "1"}, json=payload, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def status(pod, job_id):
    return requests.get(pod.url + f"/jobs/{job_id}", timeout=10).json()


def ended(pod, job_id, timeout=60):
    wait_until(lambda: status(pod, job_id)["state"] not in ("queued", "running"), timeout, f"job {job_id}")
    return status(pod, job_id)


def in_flight(pod):
    """Jobs the pod runs now, from its /metrics."""
    page = requests.get(pod.url + "/metrics", timeout=10).text
    [line] = [line for line in page.splitlines() if line.startswith("comfy_worker_jobs_in_flight ")]
    return int(float(line.split()[1]))


def completed_jobs(pod):
    page = requests.get(pod.url + "/metrics", timeout=10).text
    lines = [
        line
        for line in page.splitlines()
        if line.startswith('comfy_worker_jobs_total{code="",outcome="completed"}')
    ]
    return int(float(lines[0].split()[1])) if lines else 0


def test_a_job_submitted_to_one_pod_is_polled_and_fetched_on_the_other(pods):
    first, second = pods
    job_id = submit(first, {"workflow": with_knob("StandinSlow", color=3, seconds=1, steps=4)})
    done = ended(second, job_id)
    assert done["state"] == "completed" and done["http_status"] == 200, done
    assert done["result"]["outputs"][0]["mime"] == "image/png"
    assert status(first, job_id) == done
    runpod_view = requests.get(second.url + f"/v2/any/status/{job_id}", timeout=10).json()
    assert runpod_view["status"] == "COMPLETED" and runpod_view["output"] == done["result"]


def test_a_cancel_sent_to_one_pod_interrupts_the_job_running_on_the_other(pods):
    job_id = submit(pods[0], {"workflow": with_knob("StandinSlow", color=4, seconds=60, steps=60)})
    wait_until(lambda: status(pods[0], job_id)["state"] == "running", 20, "the job to start")
    wait_until(lambda: sum(in_flight(p) for p in pods) == 1, 10, "a pod to run the job")
    runner, other = pods if in_flight(pods[0]) else pods[::-1]
    assert requests.post(other.url + f"/jobs/{job_id}/cancel", timeout=10).status_code == 200
    done = ended(other, job_id, timeout=10)
    assert done["state"] == "cancelled" and done["result"]["error"].startswith("interrupted"), done
    wait_until(lambda: in_flight(runner) == 0, 10, "the runner to let go of the job")


def test_an_unknown_job_is_not_found_on_every_pod(pods):
    for pod in pods:
        answer = requests.get(pod.url + "/jobs/nope", timeout=10)
        assert answer.status_code == 404 and answer.json()["error"].startswith("job_not_found")


def test_an_envelope_replayed_to_the_other_pod_is_refused(pods):
    first, second = pods
    request, ephemeral = seal_request(
        {"workflow": with_knob("StandinSlow", color=5, seconds=0, steps=1)}, first.public_key
    )
    answer = requests.post(first.url + "/run", json=request, timeout=60)
    assert open_answer(answer.json(), ephemeral, first.public_key)["status"] == "ok"
    replayed = requests.post(second.url + "/run", json=request, timeout=60)
    assert replayed.status_code == 409 and replayed.json()["error"].startswith("replayed_request")


def test_nothing_of_an_encrypted_job_is_left_in_redis(pods, redis_server, prefix):
    first, second = pods
    marker = f"okapi-{uuid.uuid4().hex[:8]}"
    payload = {
        "workflow": {
            **invert_upload(f"{marker}.png"),
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": marker}},
        },
        "images": [{"name": f"{marker}.png", "image": png_b64(12, 12, (9, 8, 7))}],
    }
    request, ephemeral = seal_request(payload, first.public_key)
    job_id = submit(first, request)
    done = ended(second, job_id)
    result = open_answer(done["result"], ephemeral, first.public_key)
    assert result["status"] == "ok" and len(result["outputs"]) == 2
    plain_job = submit(second, {"workflow": with_knob("StandinSlow", color=6, seconds=0, steps=1)})
    ended(first, plain_job)
    found = everything_in(redis_server.client(), prefix)
    assert marker.encode() not in found and result["outputs"][0]["data"][:40].encode() not in found
    assert b"StandinSlow" not in found  # a plain workflow leaves with its job
    assert job_id.encode() in found  # the scan reads the records


def everything_in(client: redis.Redis, prefix: str) -> bytes:
    """Every key, hash field, set member, string and stream entry under the fleet's prefix."""
    parts = []
    for key in client.scan_iter(match=f"{prefix}:*"):
        kind = client.type(key)
        parts.append(key)
        if kind == b"hash":
            parts += [b"%s=%s" % item for item in client.hgetall(key).items()]
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"string":
            parts.append(client.get(key))
        elif kind == b"stream":
            parts += [b"%s=%s" % item for _id, fields in client.xrange(key) for item in fields.items()]
    return b"\n".join(parts)

"""Named API keys on a real pod (gunicorn, the stand-in ComfyUI): every route times every scope,
jobs seen only by their key, limits, a key file edited while the pod runs, the record kept."""

import os
import tempfile

import pytest
import requests

from services.jobs import access
from tests.file_server import FileServer
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

SCOPED = ("jobs", "models", "admin", "metrics")
TOKENS = {name: access.new_token() for name in (*SCOPED, "limited", "other", "builder")}
LINES = {
    "jobs": "jobs",
    "models": "models download_gb_per_day=0.000002",  # 2,000 bytes a day
    "admin": "admin",
    "metrics": "metrics",
    "limited": "jobs jobs=1",
    "other": "jobs",
    "builder": "jobs,models download_gb_per_day=0.000003",  # 3,000 bytes a day
}
ANY = ""  # any known key
ROUTES = [  # (method, path, the scope it needs; None: open)
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs/", None),
    ("GET", "/ping", ANY),
    ("GET", "/metrics", "metrics"),
    ("POST", "/run", "jobs"),
    ("GET", "/jobs/{job_id}", "jobs"),
    ("POST", "/jobs/{job_id}/cancel", "jobs"),
    ("GET", "/templates", "jobs"),
    ("GET", "/templates/{name}", "jobs"),
    ("POST", "/templates/{name}/run", "jobs"),
    ("POST", "/v2/{endpoint_id}/runsync", "jobs"),
    ("POST", "/v2/{endpoint_id}/run", "jobs"),
    ("GET", "/v2/{endpoint_id}/status/{job_id}", "jobs"),
    ("POST", "/v2/{endpoint_id}/status/{job_id}", "jobs"),
    ("POST", "/v2/{endpoint_id}/cancel/{job_id}", "jobs"),
    ("POST", "/download", "models"),
    ("GET", "/download/{download_id}", "models"),
    ("GET", "/downloads", "models"),
    ("GET", "/models/ls", "models"),
    ("POST", "/drain", "admin"),
    ("DELETE", "/drain", "admin"),
    ("POST", "/comfy/restart", "admin"),
    ("POST", "/comfy/free", "admin"),
]


def keys_file(names):
    return "".join(f"{name} sha256:{access.hash_of(TOKENS[name])} {LINES[name]}\n" for name in names)


def auth(name):
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def write(path, text):
    """As a platform updates a mounted secret: a new file put in place at once."""
    with open(path + ".new", "w") as file:
        file.write(text)
    os.replace(path + ".new", path)


@pytest.fixture(scope="module")
def server():
    server = FileServer()
    server.files["small.safetensors"] = os.urandom(4000)
    server.files["other.safetensors"] = os.urandom(100)
    server.files["lora.safetensors"] = os.urandom(4000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys_path():
    folder = tempfile.mkdtemp(prefix="cw-keys-")
    path = os.path.join(folder, "keys")
    write(path, keys_file(TOKENS))
    return path


@pytest.fixture(scope="module")
def pod(keys_path):
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "API_KEYS_FILE": keys_path,
        "ALLOW_PRIVATE_DOWNLOADS": "1",
    }
    with Stack("api", env).ready() as pod:
        yield pod


def call(pod, method, path, name=None, token=None):
    """One request to a route, its path parameters filled in; a body that is refused after
    the key check (nothing runs, nothing is written), and admin calls that change nothing."""
    url = pod.url + path.format(job_id="nope", name="nope", endpoint_id="x", download_id="nope")
    headers = auth(name) if name else ({"Authorization": f"Bearer {token}"} if token else {})
    params = {"instance": "7"} if path.startswith("/comfy/") else None
    body = {"input": 1} if path.startswith("/v2/") else ([] if path == "/download" else {})
    response = requests.request(method, url, headers=headers, params=params, json=body, timeout=30)
    if path == "/drain" and method == "POST" and response.status_code == 200:
        requests.delete(pod.url + "/drain", headers=headers, timeout=30)
    return response


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_every_route_with_every_scope(pod, method, path, scope):
    for name in SCOPED:
        response = call(pod, method, path, name)
        if scope is None or scope in (ANY, name):
            assert response.status_code not in (401, 403), (name, response.text)
        else:
            assert response.status_code == 403, (name, response.text)
            error = response.json()["error"]
            assert error.startswith("forbidden") and f"'{scope}'" in error and TOKENS[name] not in error
    for token in (None, access.new_token(), TOKENS["jobs"] + "x"):
        response = call(pod, method, path, token=token)
        if scope is None:
            assert response.status_code not in (401, 403), response.text
        else:
            assert response.status_code == 401 and response.json()["error"].startswith("unauthorized")


def test_openapi_declares_each_route_s_scope(pod):
    document = requests.get(pod.url + "/openapi.json", timeout=10).json()
    for method, path, scope in ROUTES:
        if path == "/docs/":
            continue
        operation = document["paths"][path][method.lower()]
        if scope is None:
            assert operation["security"] == [], path
        else:
            assert operation["security"] == [{"bearer": [scope] if scope else []}], path


def submit(pod, name, workflow):
    answer = requests.post(
        pod.url + "/run", params={"async": "1"}, json={"workflow": workflow}, headers=auth(name), timeout=30
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def state(pod, name, job_id):
    return requests.get(pod.url + f"/jobs/{job_id}", headers=auth(name), timeout=10)


def ended(pod, name, job_id, timeout=60):
    wait_until(
        lambda: state(pod, name, job_id).json()["state"] in ("completed", "failed", "cancelled"),
        timeout,
        "the job to end",
    )
    return state(pod, name, job_id).json()


def test_another_key_s_job_is_not_found_to_poll_and_to_cancel(pod):
    job_id = submit(pod, "other", with_knob("StandinSlow", color=3, seconds=30, steps=30))
    wait_until(lambda: state(pod, "other", job_id).json()["state"] == "running", 20, "the job to run")
    for path, method in (
        (f"/jobs/{job_id}", "GET"),
        (f"/jobs/{job_id}/cancel", "POST"),
        (f"/v2/x/status/{job_id}", "GET"),
        (f"/v2/x/cancel/{job_id}", "POST"),
    ):
        response = requests.request(method, pod.url + path, headers=auth("jobs"), timeout=10)
        assert response.status_code == 404 and response.json()["error"].startswith("job_not_found"), path
    assert state(pod, "other", job_id).json()["state"] == "running"  # the cancel did not reach it
    requests.post(pod.url + f"/jobs/{job_id}/cancel", headers=auth("other"), timeout=10)
    assert ended(pod, "other", job_id)["state"] == "cancelled"


def in_flight(pod):
    page = requests.get(pod.url + "/metrics", headers=auth("metrics"), timeout=10).text
    [line] = [line for line in page.splitlines() if line.startswith("comfy_worker_jobs_in_flight ")]
    return int(float(line.split()[1]))


def test_a_key_at_its_job_limit_is_answered_429_and_nothing_starts(pod):
    first = submit(pod, "limited", with_knob("StandinSlow", color=4, seconds=30, steps=30))
    wait_until(lambda: in_flight(pod) == 1, 20, "the first job to run")
    for params in ({"async": "1"}, {}):
        refused = requests.post(
            pod.url + "/run",
            params=params,
            json={"workflow": empty_image(8, 8)},
            headers=auth("limited"),
            timeout=30,
        )
        assert refused.status_code == 429 and refused.json()["error"].startswith("quota_exceeded")
        assert int(refused.headers["Retry-After"]) > 0
    assert in_flight(pod) == 1
    other = submit(pod, "jobs", empty_image(8, 8))  # another key is not held back
    requests.post(pod.url + f"/jobs/{first}/cancel", headers=auth("limited"), timeout=10)
    assert ended(pod, "limited", first)["state"] == "cancelled"
    again = submit(pod, "limited", empty_image(8, 8))  # its slot came back with the job's end
    assert ended(pod, "limited", again)["state"] == "completed"
    assert ended(pod, "jobs", other)["state"] == "completed"


def test_a_key_past_its_daily_download_bytes_is_answered_429_and_nothing_is_written(pod, server):
    def download(name):
        item = {"type": "vae", "url": f"{server.url}/file/{name}"}
        return requests.post(
            pod.url + "/download", json={"items": [item], "wait": True}, headers=auth("models"), timeout=60
        )

    first = download("small.safetensors")
    assert first.status_code == 200 and first.json()["downloads"][0]["state"] == "done", first.text
    refused = download("other.safetensors")
    assert refused.status_code == 429 and refused.json()["error"].startswith("quota_exceeded")
    assert 0 < int(refused.headers["Retry-After"]) <= 86400
    listing = requests.get(pod.url + "/models/ls", params={"type": "vae"}, headers=auth("models"), timeout=10)
    assert [m["name"] for m in listing.json()["models"]["vae"]] == ["small.safetensors"]


def test_a_job_s_models_need_the_models_scope_and_count_against_the_key_s_day(pod, server):
    """A job's `models` write to the volume as /download does: a jobs-only key is refused before
    anything is fetched, and what a job fetches counts against its key's daily bytes."""

    def run(name, file):
        job = {
            "workflow": empty_image(4, 4),
            "models": [{"type": "loras", "url": f"{server.url}/file/{file}"}],
        }
        return requests.post(pod.url + "/run", json=job, headers=auth(name), timeout=60)

    def loras():
        listing = requests.get(
            pod.url + "/models/ls", params={"type": "loras"}, headers=auth("models"), timeout=10
        )
        return [m["name"] for m in listing.json()["models"].get("loras", [])]

    refused = run("jobs", "lora.safetensors")
    assert refused.status_code == 403 and refused.json()["error"].startswith("forbidden"), refused.text
    assert "'models' scope" in refused.json()["error"] and loras() == []
    first = run("builder", "lora.safetensors")  # 4,000 bytes: under the limit when it began
    assert first.status_code == 200, first.text
    over = run("builder", "other.safetensors")
    assert over.status_code == 429 and over.json()["error"].startswith("quota_exceeded"), over.text
    assert loras() == ["lora.safetensors"]


def test_waiting_jobs_take_turns_by_key(pod):
    """One key floods the instance; another key's single job runs next, not after the flood."""
    flood = [
        submit(pod, "jobs", with_knob("StandinSlow", color=40 + n, seconds=2, steps=2)) for n in range(6)
    ]
    wait_until(lambda: waiting(pod) >= 3, 20, "two jobs on the instance and the others waiting")
    single = submit(pod, "other", empty_image(6, 6))
    for job_id in flood:
        assert ended(pod, "jobs", job_id)["state"] == "completed"
    assert ended(pod, "other", single)["state"] == "completed"
    ours = (*flood, single)
    wait_until(lambda: len(set(ends_in_order(pod)) & set(ours)) == 7, 10, "their end lines")
    order = [job_id for job_id in ends_in_order(pod) if job_id in ours]
    assert order.index(single) <= 2, order  # behind the two on the instance at most, not six


def ends_in_order(pod):
    """The ids of the jobs whose end lines the pod wrote, in that order."""
    lines = [line for line in pod.log.splitlines() if " ended: " in line and " job " in line]
    return [line.split(" job ", 1)[1].split()[0] for line in lines]


def waiting(pod):
    page = requests.get(pod.url + "/metrics", headers=auth("metrics"), timeout=10).text
    [line] = [line for line in page.splitlines() if line.startswith("comfy_worker_jobs_waiting ")]
    return int(float(line.split()[1]))


def test_refusals_and_admin_actions_are_on_record_by_key_name_never_the_key(pod):
    assert requests.post(pod.url + "/drain", headers=auth("jobs"), timeout=10).status_code == 403
    assert requests.get(pod.url + "/metrics", timeout=10).status_code == 401
    assert requests.post(pod.url + "/drain", headers=auth("admin"), timeout=10).status_code == 200
    assert requests.delete(pod.url + "/drain", headers=auth("admin"), timeout=10).status_code == 200
    wait_until(lambda: "admin DELETE /drain by key admin: 200" in pod.log, 10, "the admin lines")
    assert "admin POST /drain by key admin: 200" in pod.log
    assert "refused POST /drain for key jobs: forbidden" in pod.log
    assert "by key jobs" not in pod.log  # a refused admin call is a refusal, not an admin action
    assert "refused GET /metrics for key -: unauthorized" in pod.log
    page = requests.get(pod.url + "/metrics", headers=auth("metrics"), timeout=10).text
    assert 'comfy_worker_requests_total{key_name="jobs",outcome="forbidden"}' in page
    assert 'comfy_worker_requests_total{key_name="admin",outcome="allowed"}' in page
    assert 'comfy_worker_key_jobs_total{key_name="other",outcome="completed"}' in page
    assert all(token not in pod.log for token in TOKENS.values())


def test_a_removed_key_s_running_job_finishes_and_its_next_request_is_refused(pod, keys_path):
    job_id = submit(pod, "other", with_knob("StandinSlow", color=5, seconds=2, steps=4))
    wait_until(lambda: state(pod, "other", job_id).json()["state"] == "running", 20, "the job to run")
    try:
        write(keys_path, keys_file([name for name in TOKENS if name != "other"]))
        assert state(pod, "other", job_id).status_code == 401
        assert state(pod, "jobs", job_id).status_code == 404
        wait_until(lambda: f"job {job_id} ended: " in pod.log, 30, "the job to end")
        assert "key=other outcome=completed" in pod.log.split(f"job {job_id} ended: ")[1].splitlines()[0]
        wait_until(
            lambda: f"API_KEYS_FILE changed: {len(TOKENS) - 1} key(s) now" in pod.log,
            10,
            "the change on record",
        )
        write(keys_path, "jobs sha256:abc jobs\n")  # a bad edit: the keys in force stay
        assert requests.get(pod.url + "/ping", headers=auth("jobs"), timeout=10).status_code == 200
        kept = "API_KEYS_FILE line 1: the key of 'jobs' must be stored as sha256:<64 hex digits>"
        wait_until(lambda: kept in pod.log, 10, "why the keys in force stay")
    finally:
        write(keys_path, keys_file(TOKENS))
    wait_until(lambda: state(pod, "other", job_id).status_code == 200, 10, "the key to be back")

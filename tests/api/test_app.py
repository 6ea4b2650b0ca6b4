"""The pod API through Flask's test client (the live gunicorn stack is in test_stack.py)."""

import struct

import pytest

from client.envelope_client import open_answer, seal_request
from services.api.app import create_app
from services.core import config
from services.jobs import envelopes
from services.jobs.envelopes import v2

PRIVATE, PUBLIC = envelopes.keypair()
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
}


def make_client(**env):
    settings = config.load(
        {
            "WORKER_PRIVATE_KEY_B64": PRIVATE,
            "LAUNCH_MODE": "api",
            "DRY_RUN": "1",
            "RUN_DIR": "/nonexistent",
            **env,
        }
    )
    return create_app(settings).test_client()


@pytest.fixture
def client():
    return make_client()


def test_healthz_publishes_the_public_key_and_mode(client):
    body = client.get("/healthz").get_json()
    assert body["ok"] is True and body["mode"] == "api" and body["dry_run"] is True
    assert body["server_public_key_b64"] == PUBLIC and body["encryption_required"] is True
    instance = {
        "id": 0,
        "device": "cpu",
        "state": "NO_SUPERVISOR",
        "ready": False,
        "busy": False,
        "warmup": None,
        "preflight": None,  # DRY_RUN: no ComfyUI, nothing to prove
        "broken": None,
    }
    assert body["comfy"] == {
        "state": "NO_SUPERVISOR",
        "ready": False,
        "warmup": None,
        "instances": [instance],
    }


def test_readyz_is_ready_in_dry_run(client):
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_when_comfy_does_not_answer():
    response = make_client(DRY_RUN="0").get("/readyz")
    assert response.status_code == 503 and response.get_json()["ready"] is False


def test_encrypted_dry_run_answers_sealed(client):
    request, ephemeral = seal_request({"workflow": WORKFLOW}, PUBLIC)
    response = client.post("/run", json=request)
    assert response.status_code == 200
    body = response.get_json()
    assert body["encrypted"] is True and "status" not in body
    assert open_answer(body, ephemeral, PUBLIC) == {"status": "ok", "dry_run": True, "nodes": 2, "images": 0}


def test_encrypted_bare_workflow(client):
    request, ephemeral = seal_request(WORKFLOW, PUBLIC)
    assert open_answer(client.post("/run", json=request).get_json(), ephemeral, PUBLIC)["status"] == "ok"


def test_job_errors_of_an_encrypted_request_are_sealed(client):
    request, ephemeral = seal_request({"workflow": {"nodes": [], "links": []}}, PUBLIC)
    response = client.post("/run", json=request)
    assert response.status_code == 400
    assert "error" not in response.get_json()
    assert open_answer(response.get_json(), ephemeral, PUBLIC)["error"].startswith("invalid_workflow: ")


def test_plaintext_is_refused_when_encryption_is_required(client):
    response = client.post("/run", json={"workflow": WORKFLOW})
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("encryption_required")


def test_tampered_envelope(client):
    request, _ = seal_request({"workflow": WORKFLOW}, PUBLIC)
    request["ciphertext"] = request["ciphertext"][:-8] + "AAAAAAA="
    response = client.post("/run", json=request)
    assert response.status_code == 400 and response.get_json()["error"].startswith("invalid ciphertext")


def test_missing_envelope_fields(client):
    response = client.post("/run", json={"encrypted": True, "epk": "x"})
    assert response.get_json()["error"].startswith("missing encrypted fields")


def test_plaintext_when_allowed():
    client = make_client(ENCRYPTION_REQUIRED="0")
    assert client.post("/run", json={"workflow": WORKFLOW}).get_json()["status"] == "ok"
    graph = client.post("/run", json={"nodes": [], "links": []})
    assert graph.status_code == 400 and "Export (API)" in graph.get_json()["error"]


def test_non_dry_run_without_comfy_is_a_clear_error_not_a_fake_success():
    client = make_client(ENCRYPTION_REQUIRED="0", DRY_RUN="0", COMFY_READY_TIMEOUT_S="1", COMFY_PORT="9")
    response = client.post("/run", json={"workflow": WORKFLOW})
    assert response.status_code == 503 and response.get_json()["error"].startswith("comfy_init_failed")


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b""])
def test_body_not_json(client, body):
    response = client.post("/run", data=body, content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"].startswith("invalid_json")


def test_body_too_large():
    client = make_client(MAX_REQUEST_MB="1")
    response = client.post("/run", data=b"x" * (1024 * 1024 + 10), content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"].startswith("body_too_large")


def test_unknown_route_and_method(client):
    assert client.get("/nope").get_json()["error"].startswith("not_found")
    response = client.get("/run")
    assert response.status_code == 405 and response.get_json()["error"].startswith("method_not_allowed")


class TestApiKey:
    @pytest.fixture
    def client(self):
        return make_client(API_KEY="s3cret")

    def test_healthz_and_readyz_are_open_to_probes(self, client):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200  # DRY_RUN: ready

    @pytest.mark.parametrize("header", [None, "Bearer wrong", "s3cret", "Bearer s3cret "])
    def test_everything_else_needs_the_key(self, client, header):
        headers = {"Authorization": header} if header else {}
        for method, path in (("get", "/ping"), ("post", "/run"), ("get", "/nope")):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, path
            assert response.get_json()["error"].startswith("unauthorized")

    def test_right_key(self, client):
        request, _ = seal_request({"workflow": WORKFLOW}, PUBLIC)
        response = client.post("/run", json=request, headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("program", "code"),
    [("api", "from services.api.app import create_app; create_app()"), ("handler", None)],
)
def test_a_bad_setting_ends_the_api_and_the_handler_alike_with_one_line(program, code):
    """As the entrypoint says it, should a program be started on its own: no traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "services.handler.main"]
    env = {"PATH": "/usr/bin:/bin", "ENCRYPTION_REQUIRED": "0", "JOB_TIMEOUT_S": "soon"}
    ended = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert ended.returncode == 2
    assert f"[{program}] configuration error: JOB_TIMEOUT_S='soon'" in ended.stderr
    assert "Traceback" not in ended.stderr + ended.stdout


def test_plain_parts_are_refused_unread_where_encryption_is_required():
    client = make_client()
    body = v2.PLAIN_MAGIC + struct.pack(">Q", 2) + b"{}"
    for path in ("/run", "/templates/noise-card/run"):
        answer = client.post(path, data=body, content_type=envelopes.PLAIN_MEDIA_TYPE)
        assert answer.status_code == 400 and answer.get_json()["error"].startswith("encryption_required")

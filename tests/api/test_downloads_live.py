"""/download and /models/ls through the real gunicorn, with ComfyUI (the stand-in) reading the
same model root, and a worker killed mid-download."""

import hashlib
import os
import signal
import time

import pytest
import requests

from tests.file_server import FileServer
from tests.stack import Stack, wait_until

KEY = "dl-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BIG = os.urandom(8 * 1024 * 1024)


@pytest.fixture(scope="module")
def server():
    server = FileServer()
    server.files = {"t5.safetensors": b"t5" * 5000, "big.safetensors": BIG}
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack():
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": KEY, "ALLOW_PRIVATE_DOWNLOADS": "1"}
    stack = Stack("api", env).ready()
    yield stack
    stack.stop()


def post(stack, body):
    return requests.post(stack.url + "/download", json=body, headers=AUTH, timeout=120)


def test_download_needs_the_api_key(stack, server):
    response = requests.post(
        stack.url + "/download",
        json=[{"type": "vae", "url": f"{server.url}/file/t5.safetensors"}],
        timeout=10,
    )
    assert response.status_code == 401


def test_a_finished_download_is_listed_and_comfy_sees_it_without_a_restart(stack, server):
    response = post(
        stack, {"items": [{"type": "clip", "url": f"{server.url}/file/t5.safetensors"}], "wait": True}
    )
    assert response.status_code == 200 and response.json()["downloads"][0]["state"] == "done"
    listing = requests.get(stack.url + "/models/ls", params={"type": "clip"}, headers=AUTH, timeout=10).json()
    assert [m["name"] for m in listing["models"]["clip"]] == ["t5.safetensors"] and listing["models"]["clip"][
        0
    ]["size"] == 10000
    comfy = f"http://127.0.0.1:{stack.comfy_port}"
    assert "t5.safetensors" in requests.get(comfy + "/models/text_encoders", timeout=5).json()
    assert requests.get(comfy + "/models/clip", timeout=5).status_code == 404  # ComfyUI's own quirk


def test_async_download_with_status(stack, server):
    response = post(
        stack,
        [{"type": "upscale_models", "url": f"{server.url}/file/t5.safetensors", "filename": "x/up.pth"}],
    )
    assert response.status_code == 202
    download_id = response.json()["downloads"][0]["id"]
    wait_until(
        lambda: (
            requests.get(stack.url + f"/download/{download_id}", headers=AUTH, timeout=5).json()["state"]
            == "done"
        ),
        30,
        "done",
    )
    assert any(
        d["id"] == download_id
        for d in requests.get(stack.url + "/downloads", headers=AUTH, timeout=5).json()["downloads"]
    )
    assert (
        requests.get(stack.url + "/download/nope", headers=AUTH, timeout=5)
        .json()["error"]
        .startswith("download_not_found")
    )


def test_bad_download_requests_get_codes(stack):
    assert (
        post(stack, [{"type": "vae", "url": "http://127.0.0.1/x", "filename": "../../x"}])
        .json()["error"]
        .startswith("invalid_target")
    )
    assert (
        requests.get(stack.url + "/models/ls", params={"type": "nope"}, headers=AUTH, timeout=5)
        .json()["error"]
        .startswith("invalid_target")
    )


def test_a_killed_worker_resumes_without_a_full_transfer(stack, server):
    server.rate = 2 * 1024 * 1024
    item = [
        {
            "type": "checkpoints",
            "url": f"{server.url}/slow/big.safetensors",
            "sha256": hashlib.sha256(BIG).hexdigest(),
        }
    ]
    download_id = post(stack, item).json()["downloads"][0]["id"]
    wait_until(
        lambda: (
            requests.get(stack.url + f"/download/{download_id}", headers=AUTH, timeout=5).json()["bytes_done"]
            > 3 * 1024 * 1024
        ),
        30,
        "3 MB",
    )
    _, [worker] = stack.api_processes()
    os.kill(worker, signal.SIGKILL)
    time.sleep(0.5)
    stack.wait_http("/healthz")
    final = post(stack, {"items": item, "wait": True}).json()["downloads"][0]
    assert final["state"] == "done", final
    ranges = [r["range"] for r in server.requests if r["path"].endswith("/big.safetensors")]
    assert ranges[0] is None and ranges[-1] is not None and int(ranges[-1][6:-1]) > 3 * 1024 * 1024
    listing = requests.get(
        stack.url + "/models/ls", params={"type": "checkpoints"}, headers=AUTH, timeout=5
    ).json()
    assert [m["name"] for m in listing["models"]["checkpoints"]] == ["big.safetensors"]

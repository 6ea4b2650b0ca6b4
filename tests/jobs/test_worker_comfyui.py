"""worker-comfyui's clients, unchanged but for their endpoint URL, in both launch modes.

The client below is written the way worker-comfyui's README shows it: POST {"input": {...}}
to <endpoint>/runsync with a bearer key, read output.images[].data as base64.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tempfile

import pytest
import requests
from PIL import Image

from client.envelope_client import open_answer, seal_request
from services.jobs import worker_comfyui
from tests.stack import STANDIN, Stack, wait_until
from tests.workflows import empty_image, invert_upload, png_b64, slow_workflow, with_knob

API_KEY = "compat-endpoint-key"
COMFY_ORG_KEY = "comfyui-0123456789abcdef-compat-secret"
NODE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "api_key_node.py")


# --- the answer shape alone ---------------------------------------------------------------------
def test_outputs_become_images_of_every_kind():
    result = {
        "status": "ok",
        "prompt_id": "p",
        "outputs": [
            {
                "node_id": "9",
                "filename": "a.png",
                "type": "images",
                "mime": "image/png",
                "size": 3,
                "data": "AAAA",
            },
            {
                "node_id": "7",
                "filename": "v.mp4",
                "type": "gifs",
                "mime": "video/mp4",
                "size": 3,
                "data": "BBBB",
            },
            {
                "node_id": "5",
                "filename": None,
                "type": "text",
                "mime": "text/plain",
                "size": 2,
                "data": "aGk=",
            },
        ],
        "history": {"status": {}, "outputs": {}},
    }
    assert worker_comfyui.answer(result) == {
        "images": [
            {"filename": "a.png", "node_id": "9", "mime": "image/png", "type": "base64", "data": "AAAA"},
            {"filename": "v.mp4", "node_id": "7", "mime": "video/mp4", "type": "base64", "data": "BBBB"},
            {
                "filename": "node-5-2.txt",
                "node_id": "5",
                "mime": "text/plain",
                "type": "base64",
                "data": "aGk=",
            },
        ]
    }


def test_outputs_moved_to_the_bucket_are_s3_urls():
    moved = {"node_id": "9", "filename": "a.png", "mime": "image/png", "url": "https://b/k", "sealed": False}
    assert worker_comfyui.answer({"status": "ok", "outputs": [moved]})["images"] == [
        {
            "filename": "a.png",
            "node_id": "9",
            "mime": "image/png",
            "type": "s3_url",
            "data": "https://b/k",
            "sealed": False,
        }
    ]


def test_no_outputs_is_success_no_images():
    assert worker_comfyui.answer({"status": "ok", "prompt_id": "p"}) == {
        "status": "success_no_images",
        "images": [],
    }


# --- through the live stack, both modes -----------------------------------------------------------
@pytest.fixture(scope="module")
def comfyui(backend):
    """The backend's ComfyUI with a node that reads the Comfy.org key, as ComfyUI's API nodes do."""
    if backend is STANDIN:
        folder = tempfile.mkdtemp(prefix="compat-comfyui-")
        os.makedirs(os.path.join(folder, "custom_nodes"))
        shutil.copy(os.path.join(backend.comfyui_dir, "main.py"), folder)
        comfyui_dir = folder
    else:
        folder, comfyui_dir = None, backend.comfyui_dir
    placed = os.path.join(comfyui_dir, "custom_nodes", os.path.basename(NODE))
    shutil.copy(NODE, placed)
    yield {"COMFYUI_DIR": comfyui_dir, "COMFY_PYTHON": backend.python}
    os.remove(placed)
    if folder:
        shutil.rmtree(folder)


@pytest.fixture(scope="module", params=["api", "serverless"])
def stack(request, comfyui):
    env = {
        **comfyui,
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "API_KEY": API_KEY,
        "RESPONSE_FORMAT": "worker-comfyui",
        "JOB_TIMEOUT_S": "120",
    }
    stack = Stack(request.param, env).ready()
    yield stack
    stack.stop()


def endpoint(stack) -> str:
    """What the client's `https://api.runpod.ai/v2/<endpoint id>` becomes."""
    return f"{stack.url}/v2/{'my-pod' if stack.mode == 'api' else 'LOCAL'}"


def worker_comfyui_client(url: str, api_key: str, job_input: dict) -> dict:
    """A client as worker-comfyui's README writes it."""
    response = requests.post(
        f"{url}/runsync",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        json={"input": job_input},
        timeout=180,
    )
    response.raise_for_status()
    return response.json()


def saved_images(output: dict) -> dict[str, bytes]:
    return {
        image["filename"]: base64.b64decode(image["data"])
        for image in output["images"]
        if image["type"] == "base64"
    }


def test_a_worker_comfyui_client_gets_its_images_back(stack):
    job_input = {
        "workflow": invert_upload("photo.png"),
        "images": [{"name": "photo.png", "image": "data:image/png;base64," + png_b64(rgb=(255, 0, 0))}],
    }
    answer = worker_comfyui_client(endpoint(stack), API_KEY, job_input)
    assert answer["status"] == "COMPLETED", answer
    images = saved_images(answer["output"])
    assert len(images) == 1 and "errors" not in answer["output"]
    name, data = images.popitem()
    assert name.startswith("inverted") and name.endswith(".png")
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (32, 24)
        assert image.convert("RGB").getpixel((0, 0)) == (0, 255, 255)


def test_a_failed_workflow_is_a_failed_job_with_its_error(stack):
    answer = worker_comfyui_client(
        endpoint(stack), API_KEY, {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}
    )
    assert answer["status"] == "FAILED"
    assert answer["error"].startswith("workflow_validation_failed"), answer
    assert "NoSuchNode" in answer["error"]


def test_the_comfy_org_api_key_reaches_comfyui_and_nowhere_else(stack):
    workflow = {"1": {"class_type": "ApiKeyProbe", "inputs": {"label": "probe"}}}
    answer = worker_comfyui_client(
        endpoint(stack), API_KEY, {"workflow": workflow, "comfy_org_api_key": COMFY_ORG_KEY}
    )
    assert answer["status"] == "COMPLETED", answer
    [(name, seen)] = saved_images(answer["output"]).items()
    assert name.endswith(".txt")
    assert seen.decode() == hashlib.sha256(COMFY_ORG_KEY.encode()).hexdigest()
    without = worker_comfyui_client(endpoint(stack), API_KEY, {"workflow": workflow})
    assert list(saved_images(without["output"]).values()) == [b"no key"]
    history = requests.get(f"http://127.0.0.1:{stack.comfy_port}/history", timeout=10)
    assert COMFY_ORG_KEY not in history.text
    assert COMFY_ORG_KEY not in stack.log


def test_an_envelope_asking_for_the_worker_comfyui_shape_gets_it_sealed(stack):
    payload = {"workflow": empty_image(16, 8, 0x00FF00), "output_format": "worker-comfyui"}
    envelope, ephemeral = seal_request(payload, stack.public_key)
    answer = worker_comfyui_client(endpoint(stack), API_KEY, envelope)
    assert answer["status"] == "COMPLETED"
    assert set(answer["output"]) == {"encrypted", "nonce", "ciphertext"}
    images = saved_images(open_answer(answer["output"], ephemeral, stack.public_key))
    [data] = images.values()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (16, 8)


def test_a_request_may_ask_for_our_own_shape(stack):
    answer = worker_comfyui_client(
        endpoint(stack), API_KEY, {"workflow": empty_image(), "output_format": "worker"}
    )
    assert answer["output"]["status"] == "ok"
    assert answer["output"]["outputs"][0]["mime"] == "image/png"


def test_an_unknown_output_format_is_refused(stack):
    answer = worker_comfyui_client(
        endpoint(stack), API_KEY, {"workflow": empty_image(), "output_format": "xml"}
    )
    assert answer["status"] == "FAILED" and answer["error"].startswith("invalid_request")


def test_the_async_form_runs_and_is_polled(stack):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    started = requests.post(
        f"{endpoint(stack)}/run", headers=headers, json={"input": {"workflow": empty_image()}}, timeout=30
    ).json()
    assert started["status"] in ("IN_QUEUE", "IN_PROGRESS")
    seen: dict = {}

    def finished() -> bool:
        seen.update(
            requests.get(f"{endpoint(stack)}/status/{started['id']}", headers=headers, timeout=30).json()
        )
        return seen["status"] in ("COMPLETED", "FAILED")

    wait_until(finished, 120, "the async job to finish")
    assert seen["status"] == "COMPLETED" and len(saved_images(seen["output"])) == 1


def test_a_job_cancelled_through_the_runpod_routes_is_cancelled(stack, backend):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    slow = with_knob("StandinSlow", seconds=20, steps=20) if backend is STANDIN else slow_workflow(24)
    started = requests.post(
        f"{endpoint(stack)}/run", headers=headers, json={"input": {"workflow": slow}}, timeout=30
    )
    job_id = started.json()["id"]
    wait_until(
        lambda: (
            requests.get(f"{endpoint(stack)}/status/{job_id}", headers=headers, timeout=10).json()["status"]
            == "IN_PROGRESS"
        ),
        30,
        "the job to start",
    )
    cancelled = requests.post(f"{endpoint(stack)}/cancel/{job_id}", headers=headers, timeout=10).json()
    assert cancelled == {"id": job_id, "status": "CANCELLED"}
    wait_until(lambda: stack.job_files() == [], 30, "ComfyUI to drop the cancelled prompt")
    status = requests.get(f"{endpoint(stack)}/status/{job_id}", headers=headers, timeout=10).json()
    assert status["status"] == "CANCELLED"


def test_without_the_key_the_endpoint_is_closed(stack):
    response = requests.post(
        f"{endpoint(stack)}/runsync", json={"input": {"workflow": empty_image()}}, timeout=30
    )
    assert response.status_code == 401

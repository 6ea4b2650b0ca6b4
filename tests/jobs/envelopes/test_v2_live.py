"""Envelope v2 and plain parts through the live pod (the stand-in in make test, the real ComfyUI
in make test-real): an image in and out as bytes, a template's image parameter, errors sealed
once the box is open and plaintext JSON before, nothing left of the job in ComfyUI."""

import io
import os

import pytest
import requests
from PIL import Image, ImageChops

from client.envelope_client import (
    V2_MEDIA_TYPE,
    V2_PLAIN_MEDIA_TYPE,
    open_answer_v2,
    plain_request_v2,
    seal_request_v2,
)
from services.jobs.envelopes import keypair
from tests.jobs.templates.test_loading import EXAMPLES
from tests.stack import STANDIN, Stack, wait_until
from tests.workflows import invalid_workflow, invert_upload


@pytest.fixture(scope="module")
def stack(backend):
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "TEMPLATES_DIR": EXAMPLES, "JOB_TIMEOUT_S": "120"}
    stack = Stack("api", env, backend=backend).ready()
    try:
        yield stack
        if backend is STANDIN:  # the real ComfyUI logs its own optional nodes' import errors
            assert "Traceback" not in stack.log
    finally:
        stack.stop()


def noise_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(stack, path, body, media_type=V2_MEDIA_TYPE, **kwargs):
    headers = {"Content-Type": media_type}
    return requests.post(stack.url + path, data=body, headers=headers, timeout=120, **kwargs)


def nothing_left(stack):
    comfy = f"http://127.0.0.1:{stack.comfy_port}"
    idle = requests.get(comfy + "/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}
    return idle and requests.get(comfy + "/history", timeout=10).json() == {} and stack.job_files() == []


def test_an_image_goes_in_and_comes_out_as_its_bytes(stack):
    picture = noise_png(256, 192)
    body, ephemeral = seal_request_v2(
        {"workflow": invert_upload("noise.png"), "images": [{"name": "noise.png", "image": picture}]},
        stack.public_key,
    )
    response = post(stack, "/run", body)
    assert response.status_code == 200 and response.headers["Content-Type"] == V2_MEDIA_TYPE
    assert b"\x89PNG" not in response.content and b"inverted" not in response.content
    result = open_answer_v2(response.content, ephemeral, stack.public_key)
    assert result["status"] == "ok", result
    [output] = result["outputs"]
    assert output["mime"] == "image/png" and output["size"] == len(output["data"])
    inverted = Image.open(io.BytesIO(output["data"])).convert("RGB")
    difference = ImageChops.difference(ImageChops.invert(inverted), Image.open(io.BytesIO(picture)))
    assert max(most for _, most in difference.getextrema()) <= 1  # ComfyUI's float round trip
    wait_until(lambda: nothing_left(stack), 10, "no history and no files")


def test_a_template_takes_its_image_parameter_as_bytes(stack):
    picture = noise_png(64, 48)
    call = {"template": "soft-webp", "params": {"image": picture, "width": 24, "height": 16}}
    body, ephemeral = seal_request_v2(call, stack.public_key)
    response = post(stack, "/templates/soft-webp/run", body)
    assert response.status_code == 200, response.content[:300]
    result = open_answer_v2(response.content, ephemeral, stack.public_key)
    [output] = result["outputs"]
    assert Image.open(io.BytesIO(output["data"])).size == (24, 16)
    assert result["params"]["image"]["bytes"] == len(picture)
    wait_until(lambda: nothing_left(stack), 10, "no history and no files")


def test_a_failed_job_answers_its_error_sealed(stack):
    body, ephemeral = seal_request_v2({"workflow": invalid_workflow()}, stack.public_key)
    response = post(stack, "/run", body)
    assert response.status_code == 400 and response.headers["Content-Type"] == V2_MEDIA_TYPE
    assert b"EmptyImage" not in response.content
    error = open_answer_v2(response.content, ephemeral, stack.public_key)["error"]
    assert error.startswith("workflow_validation_failed: ") and "EmptyImage" in error


def test_what_cannot_be_opened_answers_a_plaintext_code(stack):
    assert post(stack, "/run", b"CWE1" + bytes(100)).json()["error"].startswith("invalid ciphertext:")
    other_worker = seal_request_v2({"workflow": invert_upload()}, keypair()[1])[0]
    refused = post(stack, "/run", other_worker)
    assert refused.status_code == 400 and refused.json()["error"].startswith("unknown_key:")
    body, _ = seal_request_v2({"workflow": invalid_workflow()}, stack.public_key)
    later = post(stack, "/run", body, params={"async": "1"})
    assert later.status_code == 400 and later.json()["error"].startswith("invalid_request:")
    assert post(stack, "/run", body).headers["Content-Type"] == V2_MEDIA_TYPE
    replayed = post(stack, "/run", body)
    assert replayed.status_code == 409 and replayed.json()["error"].startswith("replayed_request:")


def test_a_plain_job_in_parts_costs_its_bytes_too(stack):
    picture = noise_png(128, 96)
    body = plain_request_v2(
        {"workflow": invert_upload("p.png"), "images": [{"name": "p.png", "image": picture}]}
    )
    assert len(body) < len(picture) + 1000
    response = post(stack, "/run", body, V2_PLAIN_MEDIA_TYPE)
    assert response.status_code == 200 and response.headers["Content-Type"] == V2_PLAIN_MEDIA_TYPE
    [output] = open_answer_v2(response.content)["outputs"]
    assert Image.open(io.BytesIO(output["data"])).size == (128, 96)
    call = plain_request_v2({"image": picture, "width": 20, "height": 18}, template=True)
    response = post(stack, "/templates/soft-webp/run", call, V2_PLAIN_MEDIA_TYPE)
    result = open_answer_v2(response.content)
    assert Image.open(io.BytesIO(result["outputs"][0]["data"])).size == (20, 18)
    assert result["params"]["image"]["bytes"] == len(picture)
    failed = post(stack, "/run", plain_request_v2({"workflow": invalid_workflow()}), V2_PLAIN_MEDIA_TYPE)
    assert failed.status_code == 400 and failed.headers["Content-Type"] == V2_PLAIN_MEDIA_TYPE
    assert open_answer_v2(failed.content)["error"].startswith("workflow_validation_failed: ")
    unknown = post(stack, "/templates/nope/run", call, V2_PLAIN_MEDIA_TYPE)
    assert unknown.status_code == 404 and unknown.json()["error"].startswith("unknown_template:")
    not_parts = post(stack, "/run", b'{"workflow": {}}', V2_PLAIN_MEDIA_TYPE)
    assert not_parts.status_code == 400 and not_parts.json()["error"].startswith("invalid_request:")
    wait_until(lambda: nothing_left(stack), 10, "no history and no files")

"""Input images by URL: fetched through the SSRF guard with a size cap and a time limit, refused
with reasons that never repeat the URL; and through the live stack, sealed, in both modes."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from client.envelope_client import open_answer, seal_request
from services.core import config, errors
from services.jobs import input_images
from tests.file_server import FileServer
from tests.stack import Stack
from tests.workflows import invert_upload, png_b64

RED = base64.b64decode(png_b64(20, 10, (255, 0, 0)))


@pytest.fixture(scope="module")
def server():
    server = FileServer()
    server.files = {"red.png": RED, "big.png": RED + bytes(2_000_000), "page.html": b"<html>no image</html>"}
    yield server
    server.stop()


def settings(**env):
    return config.load({"ENCRYPTION_REQUIRED": "0", "ALLOW_PRIVATE_DOWNLOADS": "1", **env})


def refusal(url, **env) -> str:
    with pytest.raises(errors.ImageFetchFailed) as caught:
        input_images.fetch(url, settings(**env))
    message = caught.value.message
    assert "127.0.0.1" not in message and "/file/" not in message and "slow/" not in message
    return message


def test_an_image_by_url_is_fetched(server):
    assert input_images.fetch(f"{server.url}/file/red.png", settings()) == RED


def test_a_private_address_is_refused_unless_allowed(server):
    assert "not allowed" in refusal(f"{server.url}/file/red.png", ALLOW_PRIVATE_DOWNLOADS="0")


def test_the_size_cap(server):
    assert "larger than 1 MB (IMAGE_URL_MAX_MB)" in refusal(
        f"{server.url}/file/big.png", IMAGE_URL_MAX_MB="1"
    )


def test_the_time_limit(server):
    server.rate = 200_000  # bytes/s: the 2 MB image takes 10 s
    try:
        assert "longer than 0.5 s (IMAGE_URL_TIMEOUT_S)" in refusal(
            f"{server.url}/slow/big.png", IMAGE_URL_TIMEOUT_S="0.5"
        )
    finally:
        server.rate = 2 * 1024 * 1024


def test_http_errors_and_other_schemes(server):
    assert "HTTP 404" in refusal(f"{server.url}/file/missing.png")
    assert "must be http(s)" in refusal("file:///etc/passwd")
    assert "could not be reached" in refusal("http://127.0.0.1:1/x.png")


@pytest.fixture(scope="module", params=["api", "serverless"])
def stack(request):
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "1", "ALLOW_PRIVATE_DOWNLOADS": "1"}
    stack = Stack(request.param, env).ready()
    yield stack
    stack.stop()


def sealed_run(stack, payload):
    envelope, ephemeral = seal_request(payload, stack.public_key)
    if stack.mode == "api":
        answer = requests.post(f"{stack.url}/run", json=envelope, timeout=60).json()
    else:
        answer = requests.post(f"{stack.url}/v2/LOCAL/runsync", json={"input": envelope}, timeout=60).json()[
            "output"
        ]
    assert answer["encrypted"] is True
    return open_answer(answer, ephemeral, stack.public_key)


def test_an_encrypted_job_with_an_image_by_url(stack, server):
    payload = {
        "workflow": invert_upload("photo.png"),
        "images": [{"name": "photo.png", "url": f"{server.url}/file/red.png"}],
    }
    result = sealed_run(stack, payload)
    [output] = result["outputs"]
    with Image.open(io.BytesIO(base64.b64decode(output["data"]))) as image:
        assert image.size == (20, 10) and image.convert("RGB").getpixel((1, 1)) == (0, 255, 255)


def test_a_url_that_is_no_image_names_the_image_and_the_url_stays_private(stack, server):
    url = f"{server.url}/file/page.html"
    result = sealed_run(
        stack, {"workflow": invert_upload("photo.png"), "images": [{"name": "photo.png", "url": url}]}
    )
    assert result["error"].startswith("invalid_request: images[0] ('photo.png') is not a PNG")
    missing = f"{server.url}/file/gone.png"
    result = sealed_run(
        stack, {"workflow": invert_upload("photo.png"), "images": [{"name": "photo.png", "url": missing}]}
    )
    assert result["error"] == "image_fetch_failed: images[0] ('photo.png'): the server answered HTTP 404"
    assert "page.html" not in stack.log and "gone.png" not in stack.log

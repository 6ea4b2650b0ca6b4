"""Every envelope failure through the live pod API and the live serverless worker: a coded 4xx
(a FAILED job with the code on serverless), never a 500, never a traceback; a replay is
refused. DRY_RUN: the envelope is checked before the dry run stops."""

import base64
import json
import time

import pytest
import requests
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from client.envelope_client import open_answer, seal_request
from tests.stack import Stack
from tests.workflows import empty_image


@pytest.fixture(scope="module", params=["api", "serverless"])
def stack(request):
    stack = Stack(request.param, {"DRY_RUN": "1"}).ready()
    try:
        yield stack
        assert "Traceback" not in stack.log
    finally:
        stack.stop()


def send(stack, envelope):
    """(HTTP status or job status, the answer opened where it is sealed, the raw record)."""
    if stack.mode == "api":
        response = requests.post(stack.url + "/run", json=envelope, timeout=30)
        return response.status_code, response.json()
    job = requests.post(stack.url + "/v2/LOCAL/runsync", json={"input": envelope}, timeout=30).json()
    assert "Traceback" not in json.dumps(job)
    return job["status"], job.get("output") or {"error": job.get("error")}


def sealed(stack, plaintext: bytes, epk_override: bytes | None = None):
    ephemeral = PrivateKey.generate()
    nonce = random(Box.NONCE_SIZE)
    box = Box(ephemeral, PublicKey(base64.b64decode(stack.public_key)))
    envelope = {
        "encrypted": True,
        "epk": base64.b64encode(epk_override or bytes(ephemeral.public_key)).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(box.encrypt(plaintext, nonce).ciphertext).decode(),
    }
    return envelope, ephemeral


def refused(stack, envelope, code, http_status=400, ephemeral=None):
    status, answer = send(stack, envelope)
    if ephemeral is not None:
        answer = open_answer(answer, ephemeral, stack.public_key)
    assert answer["error"].startswith(f"{code}:"), answer
    if stack.mode == "api":
        assert status == http_status
    else:  # a sealed error is the job's output; a plaintext one fails the job
        assert status == ("COMPLETED" if ephemeral is not None else "FAILED")


@pytest.mark.parametrize("epk", [bytes(32), b"\x01" + bytes(31), b"\xe0\xeb\x7a\x7c" + bytes(28)])
def test_a_low_order_key_is_invalid_ciphertext(stack, epk):
    envelope, _ = sealed(stack, b'{"workflow": {}}', epk_override=epk)
    refused(stack, envelope, "invalid ciphertext")


@pytest.mark.parametrize(
    ("plaintext", "code"),
    [
        (b"\xff\xfe not utf-8", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b'{"workflow":' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001, "invalid_json"),
    ],
    ids=["not-utf8", "not-json", "deep-list", "deep-object"],
)
def test_a_plaintext_that_is_not_json_or_too_deep_is_refused(stack, plaintext, code):
    envelope, _ = sealed(stack, plaintext)
    refused(stack, envelope, code)


@pytest.mark.parametrize("plaintext", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_a_plaintext_that_is_not_an_object_is_refused_sealed(stack, plaintext):
    envelope, ephemeral = sealed(stack, plaintext)
    refused(stack, envelope, "invalid_request", ephemeral=ephemeral)


def test_the_same_envelope_runs_once(stack):
    request, ephemeral = seal_request({"workflow": empty_image()}, stack.public_key)
    _, answer = send(stack, request)
    assert open_answer(answer, ephemeral, stack.public_key)["status"] == "ok"
    refused(stack, request, "replayed_request", http_status=409)


@pytest.mark.parametrize(("age_s", "ok"), [(0, True), (500, True), (-500, True), (700, False), (-700, False)])
def test_a_ts_outside_the_window_is_refused(stack, age_s, ok):
    payload = {"workflow": empty_image(), "ts": time.time() - age_s}
    request, ephemeral = seal_request(payload, stack.public_key)
    if ok:
        _, answer = send(stack, request)
        assert open_answer(answer, ephemeral, stack.public_key)["status"] == "ok"
    else:
        refused(stack, request, "replayed_request", http_status=409)


def test_the_bundled_client_sends_ts():
    server = PrivateKey.generate()
    request, _ = seal_request(
        {"workflow": empty_image()}, base64.b64encode(bytes(server.public_key)).decode()
    )
    box = Box(server, PublicKey(base64.b64decode(request["epk"])))
    plaintext = box.decrypt(base64.b64decode(request["ciphertext"]), base64.b64decode(request["nonce"]))
    assert abs(json.loads(plaintext)["ts"] - time.time()) < 5

"""Hostile and malformed input against the live pod API: a coded error each time, never a
traceback or an uncoded 5xx, and the worker keeps serving."""

import base64
import json

import pytest
import requests

from tests.stack import Stack
from tests.workflows import empty_image, invert_upload, png_b64

KEY = "bad-input-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def stack():
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": KEY, "MAX_REQUEST_MB": "2"}
    stack = Stack("api", env).ready()
    try:
        yield stack
        assert "Traceback" not in stack.log
    finally:
        stack.stop()


def send(stack, data=None, path="/run", method="POST", headers=AUTH, **kwargs):
    response = requests.request(
        method,
        stack.url + path,
        data=data,
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
        **kwargs,
    )
    assert "Traceback" not in response.text
    assert requests.get(stack.url + "/ping", headers=AUTH, timeout=10).status_code == 200  # still serving
    return response


def coded(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(code + ":") or response.json()["error"] == code
    return response.json()["error"]


def test_body_not_json(stack):
    coded(send(stack, b"{'workflow': nope"), 400, "invalid_json")


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "5", "null", "true"])
def test_json_not_an_object(stack, body):
    coded(send(stack, body), 400, "invalid_request")


@pytest.mark.parametrize("workflow", [[1], "x", 3, {"1": "EmptyImage"}, {}])
def test_workflow_not_an_object_of_nodes(stack, workflow):
    coded(send(stack, json.dumps({"workflow": workflow})), 400, "invalid_workflow")


def test_graph_export(stack):
    assert "Export (API)" in coded(
        send(stack, json.dumps({"nodes": [{"id": 1}], "links": [], "version": 0.4})), 400, "invalid_workflow"
    )


def test_unknown_node_class(stack):
    error = coded(
        send(stack, json.dumps({"workflow": {"1": {"class_type": "Evil", "inputs": {}}}})),
        400,
        "workflow_validation_failed",
    )
    assert "Evil does not exist" in error


def test_huge_body(stack):
    coded(send(stack, b'{"workflow": "' + b"x" * (3 * 1024 * 1024) + b'"}'), 413, "body_too_large")


def test_deeply_nested_json(stack):
    coded(send(stack, b"[" * 200_000 + b"]" * 200_000), 400, "invalid_json")
    deep_node = b'{"class_type": "EmptyImage", "inputs": ' + b'{"a": ' * 50_000 + b"{}" + b"}" * 50_000 + b"}"
    coded(send(stack, b'{"workflow": {"1": ' + deep_node + b"}}"), 400, "invalid_json")


@pytest.mark.parametrize(
    "image,why",
    [
        ("!!!not base64!!!", "not valid base64"),
        (base64.b64encode(b"%PDF-1.4 hello").decode(), "is not a PNG"),
    ],
)
def test_bad_images(stack, image, why):
    body = {"workflow": invert_upload("a.png"), "images": [{"name": "a.png", "image": image}]}
    assert why in coded(send(stack, json.dumps(body)), 400, "invalid_request")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "a/b.png", "x\x00.png"])
def test_image_names_that_leave_the_box(stack, name):
    body = {"workflow": invert_upload("a.png"), "images": [{"name": name, "image": png_b64()}]}
    coded(send(stack, json.dumps(body)), 400, "invalid_request")


def test_save_prefix_that_leaves_the_output_folder(stack):
    workflow = empty_image(prefix="../../escape")
    error = coded(send(stack, json.dumps({"workflow": workflow})), 422, "execution_failed")
    assert "outside the output folder" in error


@pytest.mark.parametrize(
    "envelope,code",
    [
        ({"encrypted": True, "epk": 5, "nonce": 7, "ciphertext": 9}, "invalid ciphertext"),
        ({"encrypted": True, "epk": [], "nonce": {}, "ciphertext": 0}, "missing encrypted fields"),
        ({"encrypted": True, "epk": "AAAA", "nonce": "AAAA", "ciphertext": "AAAA"}, "invalid ciphertext"),
        ({"encrypted": True, "epk": "x" * 100000, "nonce": "y", "ciphertext": "z"}, "invalid ciphertext"),
        ({"encrypted": True, "epk": "", "nonce": "", "ciphertext": ""}, "missing encrypted fields"),
        ({"encrypted": True}, "missing encrypted fields"),
    ],
)
def test_envelope_fields_of_the_wrong_type_or_size(stack, envelope, code):
    coded(send(stack, json.dumps(envelope)), 400, code)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}],
)
def test_wrong_or_missing_api_key(stack, headers):
    coded(send(stack, json.dumps({"workflow": empty_image()}), headers=headers), 401, "unauthorized")


def test_unknown_route_and_method(stack):
    coded(send(stack, path="/admin", method="GET"), 404, "not_found")
    response = send(stack, path="/run", method="DELETE")
    coded(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]

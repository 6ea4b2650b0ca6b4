"""The stand-in answers like the real ComfyUI: both backends are held to the captures in
tests/comfyui_captures (recorded from the real ComfyUI at the pinned commit; docs/comfyui-protocol.md
says what the worker relies on), so a difference between them is a failing test (make test runs
the stand-in, make test-real the real ComfyUI)."""

import base64
import json
import os
import signal
import subprocess
import tempfile
import uuid

import pytest
import requests
import websocket

from services.models import model_folders
from tests.stack import ROOT, free_port, wait_until
from tests.workflows import png_b64

CAPTURES = os.path.join(ROOT, "tests", "comfyui_captures")
# needs a model file named in the capture (dummy.safetensors) in the checkpoints folder
MODEL_CASES = {"checkpoint_not_found"}


def capture(name):
    with open(os.path.join(CAPTURES, name)) as handle:
        return json.load(handle)


def start_comfy(backend, folder, *extra):
    """ComfyUI (or the stand-in) on its own port and folders, as the launcher would start it."""
    port = free_port()
    args = [backend.python, "-u", os.path.join(backend.comfyui_dir, "main.py"), "--port", str(port)]
    args += ["--cpu", "--disable-metadata", "--disable-auto-launch", *extra]
    for kind in ("input", "output", "temp"):  # made beforehand, as the launcher does
        os.makedirs(os.path.join(folder, kind), exist_ok=True)
        args += [f"--{kind}-directory", os.path.join(folder, kind)]
    log = open(os.path.join(folder, "comfy.log"), "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(args, cwd=backend.comfyui_dir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and _answers(url), 90, f"{backend.name} ComfyUI at {url}")
    except TimeoutError:
        stop_comfy(proc)
        raise
    return proc, url


def stop_comfy(proc):
    proc.send_signal(signal.SIGINT)  # ComfyUI's clean stop
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def comfy(backend):
    folder = tempfile.mkdtemp(prefix="comfy-")
    proc, url = start_comfy(backend, folder)
    yield url
    stop_comfy(proc)


def error_view(body):
    """What a client relies on in a 400: types, messages, details, node ids and classes."""
    if not isinstance(body, dict):
        return body
    view = {"error": {k: body["error"][k] for k in ("type", "message", "details")}} if "error" in body else {}
    view["node_errors"] = {
        node: {
            "class_type": entry["class_type"],
            "dependent_outputs": entry["dependent_outputs"],
            "errors": [(e["type"], e["message"], e["details"]) for e in entry["errors"]],
        }
        for node, entry in body.get("node_errors", {}).items()
    }
    return view


ERRORS = capture("errors.json")


@pytest.mark.parametrize("case", sorted(set(ERRORS) - MODEL_CASES))
def test_prompt_errors_match_the_captures(comfy, case):
    recorded = ERRORS[case]
    request, expected = recorded["request"], recorded["response"]
    if "json" in request:
        response = requests.request(
            request["method"], comfy + request["path"], json=request["json"], timeout=10
        )
    elif case == "malformed_json_body":
        response = requests.post(comfy + "/prompt", data=b"{not json", timeout=10)
    else:
        response = requests.request(request["method"], comfy + request["path"], data=b"", timeout=10)
    assert response.status_code == expected["status"]
    if expected["content_type"].startswith("application/json"):
        body = response.json()
        if case == "one_good_one_bad_output":
            assert error_view({"node_errors": body["node_errors"]}) == error_view(
                {"node_errors": expected["body"]["node_errors"]}
            )
        else:
            assert error_view(body) == error_view(expected["body"])
    elif expected["status"] == 500:
        assert response.text == expected["body"]


def message_types(messages):
    return [
        m["msg"]["type"] for m in messages if m["frame"] == "text" and m["msg"]["type"] != "feature_flags"
    ]


def run_with_socket(url, prompt):
    client_id = str(uuid.uuid4())
    ws = websocket.create_connection(url.replace("http", "ws") + f"/ws?clientId={client_id}", timeout=10)
    response = requests.post(
        url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=10
    ).json()
    received = []
    while True:
        message = json.loads(ws.recv())
        received.append(message)
        if message["type"] == "executing" and message["data"]["node"] is None:
            break
    ws.close()
    return response, received


def test_message_order_of_a_run_matches_the_capture(comfy):
    recorded = capture("ws_messages.json")
    prompt = recorded["prompt_post"]["request"]["json"]["prompt"]
    response, received = run_with_socket(comfy, prompt)
    assert set(response) == {"prompt_id", "number", "node_errors"}
    assert [m["type"] for m in received] == message_types(recorded["messages"])
    assert received[0]["data"]["sid"]
    executed = next(m for m in received if m["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["filename"] == "ws_test_00001_.png"
    assert all(
        m["data"].get("prompt_id") == response["prompt_id"] for m in received[3:] if m["type"] != "status"
    )


def test_cached_rerun_matches_the_capture(comfy):
    recorded = capture("ws_messages_cached.json")["runs"]
    prompt = recorded[0]["prompt_post"]["request"]["json"]["prompt"]
    _, first = run_with_socket(comfy, prompt)
    _, again = run_with_socket(comfy, prompt)
    assert [m["type"] for m in again[1:]] == message_types(
        recorded[1]["messages"]
    )  # [0]: our new socket's status
    cached = next(m for m in again if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2"]
    first_file = next(m for m in first if m["type"] == "executed")["data"]["output"]
    assert next(m for m in again if m["type"] == "executed")["data"]["output"] == first_file


def test_runtime_error_matches_the_capture(comfy):
    recorded = capture("runtime_error.json")
    prompt = recorded["prompt_post"]["request"]["json"]["prompt"]
    response, received = run_with_socket(comfy, prompt)
    expected = [t for t in message_types(recorded["messages"])]
    assert [m["type"] for m in received] == expected
    error = next(m for m in received if m["type"] == "execution_error")["data"]
    recorded_error = next(
        m["msg"]["data"] for m in recorded["messages"] if m["msg"]["type"] == "execution_error"
    )
    assert set(error) == set(recorded_error)
    assert "outside the output folder is not allowed" in error["exception_message"]
    entry = requests.get(comfy + f"/history/{response['prompt_id']}", timeout=5).json()[response["prompt_id"]]
    assert (
        entry["outputs"] == {}
        and entry["status"]["status_str"] == "error"
        and entry["status"]["completed"] is False
    )


def test_history_entry_has_the_captured_shape(comfy):
    recorded = capture("history_ok.json")
    body = next(iter(recorded["response"]["body"].values()))
    response, _ = run_with_socket(
        comfy, recorded["response"]["body"][next(iter(recorded["response"]["body"]))]["prompt"][2]
    )
    entry = requests.get(comfy + f"/history/{response['prompt_id']}", timeout=5).json()[response["prompt_id"]]
    assert set(entry) == set(body)
    assert entry["prompt"][1] == response["prompt_id"] and entry["prompt"][4] == body["prompt"][4]
    assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in body["status"]["messages"]]
    assert requests.get(comfy + "/history/not-a-prompt", timeout=5).json() == {}


def test_view_and_upload_semantics(comfy):
    assert (
        requests.get(
            comfy + "/view", params={"filename": "nope.png", "type": "output"}, timeout=5
        ).status_code
        == 404
    )
    assert (
        requests.get(
            comfy + "/view", params={"filename": "../x.png", "type": "output"}, timeout=5
        ).status_code
        == 400
    )
    data = base64.b64decode(png_b64(3, 3))

    def upload(payload, form):
        return requests.post(
            comfy + "/upload/image", files={"image": ("capture_red.png", payload)}, data=form, timeout=5
        )

    assert upload(data, {"overwrite": "true", "subfolder": "uploads", "type": "input"}).json() == {
        "name": "capture_red.png",
        "subfolder": "uploads",
        "type": "input",
    }
    assert upload(data, {"subfolder": "uploads"}).json()["name"] == "capture_red.png"
    assert upload(data + b"x", {"subfolder": "uploads"}).json()["name"] == "capture_red (1).png"
    assert upload(data, {"subfolder": "../../etc"}).status_code == 400
    assert requests.post(comfy + "/upload/image", data={"subfolder": "x"}, timeout=5).status_code == 400
    view = requests.get(
        comfy + "/view",
        params={"filename": "capture_red.png", "subfolder": "uploads", "type": "input"},
        timeout=5,
    )
    assert view.status_code == 200 and view.content == data


def test_origin_mismatch_is_refused(comfy):
    response = requests.get(comfy + "/system_stats", headers={"Origin": "http://evil.example"}, timeout=5)
    assert response.status_code == 403 and response.content == b""


def test_every_route_is_also_under_api(comfy):
    assert requests.get(comfy + "/api/system_stats", timeout=5).json()["system"]["comfyui_version"]


def test_model_folders_follow_the_extra_model_paths_yaml(backend, tmp_path):
    models = tmp_path / "models"
    for relative in (
        "clip/legacy.safetensors",
        "text_encoders/te.safetensors",
        "checkpoints/sdxl/sub.safetensors",
        "checkpoints/readme.txt",
    ):
        (models / relative).parent.mkdir(parents=True, exist_ok=True)
        (models / relative).write_bytes(b"x")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(model_folders.extra_model_paths_yaml(str(models)))
    proc, url = start_comfy(backend, str(tmp_path), "--extra-model-paths-config", str(config))
    try:
        recorded = capture("models_extra_paths.json")
        assert requests.get(url + "/models", timeout=5).json()[:20] == recorded["models"]["response"]["body"]
        assert requests.get(url + "/models/text_encoders", timeout=5).json() == [
            "legacy.safetensors",
            "te.safetensors",
        ]
        assert requests.get(url + "/models/checkpoints", timeout=5).json() == ["sdxl/sub.safetensors"]
        for folder in ("clip", "unet", "not_a_folder"):
            assert requests.get(url + f"/models/{folder}", timeout=5).status_code == 404
    finally:
        stop_comfy(proc)


def _answers(url):
    try:
        return requests.get(url + "/system_stats", timeout=1).status_code == 200
    except requests.RequestException:
        return False

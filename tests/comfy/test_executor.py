"""Real workflows through the pod API: real supervisord, gunicorn and the real launcher running
the ComfyUI stand-in. One stack for the module; faults that kill ComfyUI are in test_faults.py."""

import base64
import json
import time

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from tests.stack import Stack, wait_until
from tests.workflows import decode_png, empty_image, invalid_workflow, invert_upload, png_b64, with_knob


@pytest.fixture(scope="module")
def stack():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "JOB_TIMEOUT_S": "60"}).ready()
    yield stack
    stack.stop()


def run(stack, payload, **params):
    return requests.post(stack.url + "/run", json=payload, params=params, timeout=90)


def comfy(stack, path):
    return requests.get(f"http://127.0.0.1:{stack.comfy_port}{path}", timeout=5).json()


def save_file(kind, extension, seconds=0.0, named=True):
    return {
        "class_type": "StandinSaveFile",
        "inputs": {
            "image": ["3", 0],
            "kind": kind,
            "extension": extension,
            "seconds": seconds,
            "named": named,
        },
    }


def latent_shape(data):
    """The shape of the tensor in a .latent (safetensors) file."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])["latent_tensor"]["shape"]


def nothing_left(stack):
    idle = comfy(stack, "/queue") == {"queue_running": [], "queue_pending": []}
    return idle and comfy(stack, "/history") == {} and stack.job_files() == []


def test_empty_image_returns_a_png_of_the_right_size_and_colour(stack):
    response = run(stack, {"workflow": empty_image(64, 48, 0x00FF00)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok" and body["prompt_id"]
    [output] = body["outputs"]
    assert output["node_id"] == "2" and output["type"] == "images" and output["filename"].endswith(".png")
    image = decode_png(output)
    assert image.size == (64, 48) and image.convert("RGB").getpixel((10, 10)) == (0, 255, 0)
    assert body["history"]["status"]["status_str"] == "success" and "2" in body["history"]["outputs"]
    assert "prompt" not in body["history"]  # never the echoed workflow


def test_outputs_carry_no_workflow_metadata(stack):
    image = decode_png(run(stack, {"workflow": empty_image(8, 8, 7, prefix="meta")}).json()["outputs"][0])
    assert "prompt" not in image.info and "workflow" not in image.info


def test_uploaded_image_is_loaded_inverted_and_returned(stack):
    payload = {
        "workflow": invert_upload("red.png"),
        "images": [{"name": "red.png", "image": png_b64(32, 24)}],
    }
    body = run(stack, payload).json()
    image = decode_png(body["outputs"][0])
    assert image.size == (32, 24) and image.convert("RGB").getpixel((0, 0)) == (0, 255, 255)


def test_data_uri_upload_and_annotated_name(stack):
    workflow = invert_upload("blue.png [input]")
    payload = {
        "workflow": workflow,
        "images": [{"name": "blue.png", "image": "data:image/png;base64," + png_b64(5, 5, (0, 0, 255))}],
    }
    image = decode_png(run(stack, payload).json()["outputs"][0])
    assert image.convert("RGB").getpixel((2, 2)) == (255, 255, 0)


def test_encrypted_job_round_trip(stack):
    request, ephemeral = seal_request({"workflow": empty_image(20, 10, 0x0000FF)}, stack.public_key)
    response = run(stack, request)
    body = response.json()
    assert response.status_code == 200 and body["encrypted"] is True and "outputs" not in body
    result = open_answer(body, ephemeral, stack.public_key)
    assert decode_png(result["outputs"][0]).convert("RGB").getpixel((0, 0)) == (0, 0, 255)


def test_preview_image_outputs_come_from_temp_and_are_removed(stack):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 2, "color": 9}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    body = run(stack, {"workflow": workflow}).json()
    assert [o["filename"].startswith("ComfyUI_temp_") for o in body["outputs"]] == [True, True]
    wait_until(lambda: nothing_left(stack), 5, "the clean-up after the answer")


def test_cached_rerun_still_returns_its_output(stack):
    workflow = empty_image(30, 30, 0x123456, prefix="cached")
    first, second = run(stack, {"workflow": workflow}).json(), run(stack, {"workflow": workflow}).json()
    assert len(first["outputs"]) == len(second["outputs"]) == 1
    assert decode_png(second["outputs"][0]).size == (30, 30)


def test_no_history_answers_only_status_and_prompt_id(stack):
    body = run(stack, {"workflow": empty_image(), "no_history": True}).json()
    assert set(body) == {"status", "prompt_id"}


def test_validation_error_names_node_class_and_message(stack):
    workflow = invalid_workflow()
    response = run(stack, {"workflow": workflow})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("workflow_validation_failed: ")
    assert "node 1 (EmptyImage): Required input is missing: color" in error
    assert "node 3 (ImageScale): Value not in list: upscale_method: 'magic'" in error


def test_a_workflow_with_one_invalid_output_fails_whole_and_leaves_nothing_queued(stack):
    """ComfyUI answers 200 and queues the valid output; the job must not answer ok without it."""
    workflow = empty_image(12, 12, 0x00FF00)
    workflow["3"] = {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}}
    response = run(stack, {"workflow": workflow})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("workflow_validation_failed: node 3 (LoadImage): ") and "nope.png" in error
    wait_until(lambda: nothing_left(stack), 10, "ComfyUI idle with no history and no files")


def test_every_output_kind_is_returned_and_every_file_removed(stack):
    """latents (SaveLatent), 3d (SaveGLB), a custom node's own kind, and a file no output names."""
    image = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}}
    workflow = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["1", 0], "filename_prefix": "latents/kinds"},
        },
        "3": image,
        "4": save_file("3d", "glb"),
        "5": save_file("meshes", "obj"),
        "6": save_file("unused", "ckpt", named=False),
    }
    response = run(stack, {"workflow": workflow})
    assert response.status_code == 200, response.text
    outputs = {o["type"]: o for o in response.json()["outputs"]}
    assert sorted(outputs) == ["3d", "latents", "meshes"]
    assert outputs["3d"]["mime"] == "model/gltf-binary" and outputs["meshes"]["mime"] == "model/obj"
    assert outputs["latents"]["filename"].endswith(".latent")
    assert latent_shape(base64.b64decode(outputs["latents"]["data"])) == [1, 4, 8, 8]
    assert base64.b64decode(outputs["3d"]["data"]) == b"standin file\n"
    wait_until(lambda: nothing_left(stack), 5, "the clean-up after the answer")


def test_a_long_node_that_outlives_the_interrupt_leaves_nothing_once_it_ends(stack):
    """The node runs 7 s deaf to the interrupt: the timeout answers first, the file comes later."""
    started = time.monotonic()
    workflow = {"3": empty_image()["1"], "4": save_file("3d", "glb", seconds=7)}
    response = run(stack, {"workflow": workflow, "timeout_s": 1})
    assert response.status_code == 504 and response.json()["error"].startswith("timeout")
    assert time.monotonic() - started < 6.5  # answered before the node wrote its file
    wait_until(lambda: comfy(stack, "/queue")["queue_running"] == [], 15, "the long node to end")
    wait_until(lambda: nothing_left(stack), 5, "the late file and history entry to go")


def test_a_prompt_slower_than_the_old_5_s_limit_is_still_taken(stack):
    response = run(stack, {"workflow": with_knob("StandinSlowSubmit", color=11, seconds=6)})
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["outputs"][0]).size == (16, 16)


def test_unknown_node_class(stack):
    response = run(stack, {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert response.status_code == 400
    assert "NoSuchNode does not exist" in response.json()["error"]


def test_runtime_error_names_the_node(stack):
    response = run(stack, {"workflow": with_knob("StandinFail", message="boom at step 3")})
    assert response.status_code == 422
    assert response.json()["error"] == "execution_failed: node 2 (StandinFail): boom at step 3"


def test_non_dict_prompt_is_refused_before_comfy(stack):
    response = run(stack, {"workflow": [1, 2, 3]})
    assert response.status_code == 400 and response.json()["error"].startswith("invalid_workflow")


def test_timeout_interrupts_the_running_prompt(stack):
    started = time.monotonic()
    response = run(stack, {"workflow": with_knob("StandinSlow", seconds=30, steps=60), "timeout_s": 1})
    assert response.status_code == 504 and response.json()["error"].startswith("timeout")
    assert time.monotonic() - started < 15
    wait_until(
        lambda: comfy(stack, "/queue") == {"queue_running": [], "queue_pending": []}, 10, "an idle queue"
    )
    assert run(stack, {"workflow": empty_image()}).status_code == 200


def test_timeout_of_a_pending_prompt_removes_it_from_the_queue(stack):
    blocker = requests.post(
        stack.url + "/run",
        params={"async": "1"},
        json={"workflow": with_knob("StandinSlow", color=77, seconds=4, steps=8)},
        timeout=10,
    ).json()
    wait_until(
        lambda: requests.get(stack.url + f"/jobs/{blocker['id']}", timeout=5).json()["state"] == "running",
        10,
        "blocker running",
    )
    time.sleep(0.5)
    response = run(stack, {"workflow": empty_image(9, 9, 99), "timeout_s": 1})
    assert response.status_code == 504
    assert comfy(stack, "/queue")["queue_pending"] == []
    wait_until(
        lambda: requests.get(stack.url + f"/jobs/{blocker['id']}", timeout=5).json()["state"] == "completed",
        20,
        "blocker done",
    )


def test_websocket_drop_reconnects_and_the_job_completes(stack):
    response = run(
        stack, {"workflow": with_knob("StandinDropSockets", color=5, seconds=1.5, refuse_seconds=0)}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"]) == 1
    wait_until(lambda: "websocket reconnected" in stack.log, 5, "the reconnect log line")


def test_websocket_refused_falls_back_to_polling_the_history(stack):
    response = run(
        stack, {"workflow": with_knob("StandinDropSockets", color=6, seconds=3, refuse_seconds=30)}
    )
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["outputs"][0]).size == (16, 16)
    wait_until(lambda: "polling the history" in stack.log, 5, "the polling log line")


def test_async_job_reports_progress_and_result(stack):
    started = requests.post(
        stack.url + "/run",
        params={"async": "1"},
        json={"workflow": with_knob("StandinSlow", color=3, seconds=3, steps=6)},
        timeout=10,
    )
    assert started.status_code == 202
    job_id = started.json()["id"]
    seen = []

    def finished():
        status = requests.get(stack.url + f"/jobs/{job_id}", timeout=5).json()
        if status["progress"]:
            seen.append(status["progress"])
        return status["state"] in ("completed", "failed")

    wait_until(finished, 30, "the async job")
    status = requests.get(stack.url + f"/jobs/{job_id}", timeout=5).json()
    assert status["state"] == "completed" and status["http_status"] == 200, status
    assert decode_png(status["result"]["outputs"][0]).size == (16, 16)
    assert any(p.get("node") == "2" and p.get("max") == 6 for p in seen)


def test_async_job_cancel_interrupts_comfy(stack):
    job_id = requests.post(
        stack.url + "/run",
        params={"async": "1"},
        json={"workflow": with_knob("StandinSlow", color=4, seconds=30, steps=60)},
        timeout=10,
    ).json()["id"]
    wait_until(lambda: comfy(stack, "/queue")["queue_running"] != [], 10, "the prompt to run")
    assert requests.post(stack.url + f"/jobs/{job_id}/cancel", timeout=5).status_code == 200
    wait_until(
        lambda: requests.get(stack.url + f"/jobs/{job_id}", timeout=5).json()["state"] == "cancelled",
        15,
        "cancelled",
    )
    result = requests.get(stack.url + f"/jobs/{job_id}", timeout=5).json()["result"]
    assert result["error"].startswith("interrupted")
    assert comfy(stack, "/queue")["queue_running"] == []


def test_unknown_async_job(stack):
    response = requests.get(stack.url + "/jobs/nope", timeout=5)
    assert response.status_code == 404 and response.json()["error"].startswith("job_not_found")


def test_nothing_of_an_encrypted_job_remains(stack):
    marker = "zebra-secret-7731"
    payload = {
        "workflow": {
            **invert_upload(f"{marker}.png"),
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": marker}},
        },
        "images": [{"name": f"{marker}.png", "image": png_b64(12, 12, (1, 2, 3))}],
    }
    request, ephemeral = seal_request(payload, stack.public_key)
    result = open_answer(run(stack, request).json(), ephemeral, stack.public_key)
    assert result["status"] == "ok" and len(result["outputs"]) == 2
    wait_until(lambda: nothing_left(stack), 5, "the clean-up after the answer")
    time.sleep(0.5)  # let the log pipe catch up
    output_b64 = result["outputs"][0]["data"]
    assert marker not in stack.log and output_b64[:40] not in stack.log and stack.private_key not in stack.log
    assert base64.b64decode(output_b64)[:8] == b"\x89PNG\r\n\x1a\n"

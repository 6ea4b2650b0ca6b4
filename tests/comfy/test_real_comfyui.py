"""The worker against the unmodified ComfyUI (make test-real), through the real supervisord stack
in both launch modes: encrypted jobs checked by their pixels, ComfyUI's own error words, a real
model fetched, listed, loaded and run, timeout, cancel and a killed ComfyUI. After every job
nothing of it is left in ComfyUI's history or its input, output and temp folders."""

import base64
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from services.comfy import supervisor_state
from tests.file_server import FileServer
from tests.stack import Stack, real_backend, wait_until
from tests.workflows import decode_png, empty_image, invalid_workflow, invert_upload, png_b64, slow_workflow

pytestmark = pytest.mark.real

API_KEY = "real-tier-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# A real upscaler with random weights: spandrel's Compact, 2x, about 10 KB.
MAKE_UPSCALER = """
import sys
from safetensors.torch import save
from spandrel.architectures.Compact import Compact
model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
sys.stdout.buffer.write(save({k: v.contiguous() for k, v in model.state_dict().items()}))
"""


@pytest.fixture(scope="module")
def upscaler():
    backend = real_backend()
    made = subprocess.run([backend.python, "-c", MAKE_UPSCALER], capture_output=True, check=True, timeout=120)
    return made.stdout


@pytest.fixture(scope="module", params=["api", "serverless"])
def stack(request):
    env = {"DRY_RUN": "0", "API_KEY": API_KEY, "JOB_TIMEOUT_S": "120", "ALLOW_PRIVATE_DOWNLOADS": "1"}
    env["ENCRYPTION_REQUIRED"] = "0"  # every job here is encrypted but one, whose progress names nodes
    stack = Stack(request.param, env, backend=real_backend()).ready()
    yield stack
    stack.stop()


# --- a client of either mode -------------------------------------------------------------------
def start(stack, payload, sealed=True):
    """Submit a job without waiting, encrypted unless `sealed` is False; returns (job id, the key
    to open its answer)."""
    request, ephemeral = seal_request(payload, stack.public_key) if sealed else (payload, None)
    if stack.mode == "api":
        response = requests.post(
            stack.url + "/run", params={"async": "1"}, json=request, headers=AUTH, timeout=30
        )
        assert response.status_code == 202, response.text
    else:
        response = requests.post(
            stack.url + "/v2/LOCAL/run", json={"input": request}, headers=AUTH, timeout=30
        )
        assert response.status_code == 200, response.text
    return response.json()["id"], ephemeral


def outcome(stack, job_id, ephemeral, timeout=180):
    """Wait for the job's end; returns (final state, the opened answer)."""
    final = {"completed", "failed", "cancelled", "COMPLETED", "FAILED", "CANCELLED"}
    path = f"/jobs/{job_id}" if stack.mode == "api" else f"/v2/LOCAL/status/{job_id}"
    seen = {}

    def ended():
        seen.update(requests.get(stack.url + path, headers=AUTH, timeout=10).json())
        return seen.get("state", seen.get("status")) in final

    wait_until(ended, timeout, f"job {job_id} to end")
    state = seen.get("state", seen.get("status"))
    answer = seen.get("result") if stack.mode == "api" else seen.get("output")
    if not answer:
        return state, {"error": seen.get("error")}
    return state, open_answer(answer, ephemeral, stack.public_key) if ephemeral else answer


def current_node(stack, job_id):
    """The node a plain job's progress names (ComfyUI's `executing` message), or None."""
    path = f"/jobs/{job_id}" if stack.mode == "api" else f"/v2/LOCAL/status/{job_id}"
    seen = requests.get(stack.url + path, headers=AUTH, timeout=10).json()
    progress = seen.get("progress") if stack.mode == "api" else seen.get("output")
    return progress.get("node") if isinstance(progress, dict) else None


def run(stack, payload):
    return outcome(stack, *start(stack, payload))[1]


def cancel(stack, job_id):
    if stack.mode == "api":
        cancelled = requests.post(stack.url + f"/jobs/{job_id}/cancel", headers=AUTH, timeout=10)
    else:
        cancelled = requests.post(stack.url + f"/v2/LOCAL/cancel/{job_id}", headers=AUTH, timeout=10)
    assert cancelled.status_code == 200


def comfy(stack, path, **kwargs):
    return requests.request(
        kwargs.pop("method", "GET"), f"http://127.0.0.1:{stack.comfy_port}{path}", timeout=10, **kwargs
    )


def assert_nothing_left(stack):
    """The clean-up runs right after the answer: give it a moment."""
    wait_until(lambda: nothing_left(stack), 10, "no history and no files")


def nothing_left(stack):
    idle = comfy(stack, "/queue").json() == {"queue_running": [], "queue_pending": []}
    return idle and comfy(stack, "/history").json() == {} and stack.job_files() == []


def answers(stack, path):
    try:
        return comfy(stack, path).status_code == 200
    except requests.RequestException:
        return False


def wait_idle(stack):
    idle = {"queue_running": [], "queue_pending": []}
    wait_until(lambda: comfy(stack, "/queue").json() == idle, 30, "ComfyUI's queue to empty")


# --- jobs -------------------------------------------------------------------------------------
def test_encrypted_empty_image_returns_the_png(stack):
    result = run(stack, {"workflow": empty_image(64, 48, 0x00FF00)})
    assert result["status"] == "ok", result
    [output] = result["outputs"]
    image = decode_png(output)
    assert image.size == (64, 48) and image.convert("RGB").getpixel((10, 10)) == (0, 255, 0)
    assert "prompt" not in image.info and "workflow" not in image.info  # --disable-metadata
    assert result["history"]["status"]["status_str"] == "success"
    assert_nothing_left(stack)


def test_encrypted_upload_is_loaded_inverted_and_returned(stack):
    payload = {
        "workflow": invert_upload("red.png"),
        "images": [{"name": "red.png", "image": png_b64(32, 24)}],
    }
    result = run(stack, payload)
    image = decode_png(result["outputs"][0])
    assert image.size == (32, 24) and image.convert("RGB").getpixel((0, 0)) == (0, 255, 255)
    assert_nothing_left(stack)


def test_a_cached_rerun_returns_a_fresh_file(stack):
    workflow = empty_image(30, 30, 0x123456, prefix="cached")
    first, second = run(stack, {"workflow": workflow}), run(stack, {"workflow": workflow})
    assert len(first["outputs"]) == len(second["outputs"]) == 1
    assert decode_png(second["outputs"][0]).convert("RGB").getpixel((1, 1)) == (0x12, 0x34, 0x56)
    assert second["outputs"][0]["data"] == first["outputs"][0]["data"]
    assert_nothing_left(stack)


def test_validation_error_in_comfyuis_words(stack):
    workflow = invalid_workflow()
    error = run(stack, {"workflow": workflow})["error"]
    assert error.startswith("workflow_validation_failed: ")
    assert "node 1 (EmptyImage): Required input is missing: color" in error
    assert "node 3 (ImageScale): Value not in list: upscale_method: 'magic' not in [" in error
    assert_nothing_left(stack)


def test_one_invalid_output_fails_the_job_and_its_valid_part_leaves_nothing(stack):
    workflow = empty_image(12, 12, 0x00FF00)
    workflow["3"] = {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}}
    error = run(stack, {"workflow": workflow})["error"]
    assert error.startswith("workflow_validation_failed: node 3 (LoadImage): ") and "nope.png" in error
    wait_until(lambda: nothing_left(stack), 30, "the queued part to end and leave nothing")


def test_runtime_error_in_comfyuis_words(stack):
    checkpoints = os.path.join(stack.run_dir, "models", "checkpoints")
    header = b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    with open(os.path.join(checkpoints, "dummy.safetensors"), "wb") as handle:  # valid file, no model
        handle.write(len(header).to_bytes(8, "little") + header + bytes(4))
    workflow = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dummy.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    error = run(stack, {"workflow": workflow})["error"]
    assert error.startswith(
        "execution_failed: node 1 (CheckpointLoaderSimple): ERROR: Could not detect model type"
    )
    assert_nothing_left(stack)


def test_a_real_model_is_fetched_listed_loaded_and_run(stack, upscaler):
    models = os.path.join(stack.run_dir, "models")
    if stack.mode == "api":
        server = FileServer()
        server.files = {"tiny2x.safetensors": upscaler}
        try:
            item = {"type": "upscale_models", "url": f"{server.url}/file/tiny2x.safetensors"}
            response = requests.post(
                stack.url + "/download", json={"items": [item], "wait": True}, headers=AUTH, timeout=60
            )
        finally:
            server.stop()
        assert response.status_code == 200, response.text
        listed = requests.get(
            stack.url + "/models/ls", params={"type": "upscale_models"}, headers=AUTH, timeout=10
        )
        assert [m["name"] for m in listed.json()["models"]["upscale_models"]] == ["tiny2x.safetensors"]
    else:  # serverless has no /download: the model is on the volume
        with open(os.path.join(models, "upscale_models", "tiny2x.safetensors"), "wb") as handle:
            handle.write(upscaler)
    wait_until(lambda: answers(stack, "/models/upscale_models"), 120, "ComfyUI's own port")  # first test run
    assert "tiny2x.safetensors" in comfy(stack, "/models/upscale_models").json()
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny2x.safetensors"}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }
    payload = {"workflow": workflow, "images": [{"name": "small.png", "image": png_b64(24, 16)}]}
    result = run(stack, payload)
    assert result["status"] == "ok", result
    assert decode_png(result["outputs"][0]).size == (48, 32)
    assert_nothing_left(stack)


def test_an_encrypted_job_brings_its_model_by_url_and_comfyui_uses_it(stack, upscaler):
    """A job's `models` (issue 23): fetched on demand inside the envelope, then loaded by ComfyUI."""
    name = f"ondemand-{stack.mode}.safetensors"
    server = FileServer()
    server.files = {name: upscaler}
    url = f"{server.url}/file/{name}"
    try:
        workflow = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
            "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": name}},
            "3": {
                "class_type": "ImageUpscaleWithModel",
                "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
            },
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
        }
        payload = {
            "workflow": workflow,
            "images": [{"name": "small.png", "image": png_b64(20, 14)}],
            "models": [
                {"type": "upscale_models", "url": url, "sha256": hashlib.sha256(upscaler).hexdigest()}
            ],
        }
        result = run(stack, payload)
        assert result["status"] == "ok", result
        assert decode_png(result["outputs"][0]).size == (40, 28)
        again = run(stack, payload)
        assert again["status"] == "ok" and len(server.requests) == 1  # cached: no second request
    finally:
        server.stop()
    with open(os.path.join(stack.run_dir, "models", "upscale_models", name), "rb") as handle:
        assert handle.read() == upscaler
    assert url not in stack.log and server.url not in stack.log
    assert_nothing_left(stack)


def test_timeout_interrupts_a_long_prompt_and_the_next_job_runs(stack):
    started = time.monotonic()
    result = run(stack, {"workflow": slow_workflow(), "timeout_s": 1})
    assert result["error"].startswith("timeout"), result
    assert time.monotonic() - started < 30
    wait_idle(stack)
    assert run(stack, {"workflow": empty_image(9, 9)})["status"] == "ok"
    assert_nothing_left(stack)


def test_cancel_interrupts_a_long_prompt_and_the_next_job_runs(stack):
    job_id, ephemeral = start(stack, {"workflow": slow_workflow(8)})
    wait_until(lambda: comfy(stack, "/queue").json()["queue_running"] != [], 30, "the prompt to run")
    cancel(stack, job_id)
    state, _ = outcome(stack, job_id, ephemeral)
    assert state.lower() == "cancelled"
    wait_idle(stack)
    assert run(stack, {"workflow": empty_image(9, 9)})["status"] == "ok"
    assert_nothing_left(stack)


def pending(stack):
    return comfy(stack, "/queue").json()["queue_pending"]


def test_a_queued_job_cancelled_or_timed_out_leaves_the_running_one_alone(stack):
    """The next job waits in ComfyUI's own queue behind the running one (both modes take two at
    once): a cancel or a timeout takes it out of that queue, and the running job goes on."""
    wait_until(
        lambda: answers(stack, "/system_stats"), 120, "ComfyUI to answer"
    )  # serverless: it may boot still
    blocker = start(stack, {"workflow": slow_workflow(60, color=0x101010)})
    wait_until(lambda: comfy(stack, "/queue").json()["queue_running"] != [], 30, "the blocker to run")

    def taken_out_while_the_blocker_runs():
        queue = comfy(stack, "/queue").json()
        assert queue["queue_running"] != [], "the blocker ended first: a longer one is needed"
        return queue["queue_pending"] == []

    job_id, ephemeral = start(stack, {"workflow": empty_image(9, 9, 0x111111)})
    wait_until(lambda: pending(stack) != [], 30, "the next job to queue behind it")
    cancel(stack, job_id)
    assert outcome(stack, job_id, ephemeral)[0].lower() == "cancelled"
    # serverless: the runpod SDK hears of the cancel at its next look, then the prompt goes
    wait_until(taken_out_while_the_blocker_runs, 30, "the cancelled prompt to leave ComfyUI's queue")
    _, result = outcome(stack, *start(stack, {"workflow": empty_image(9, 9, 0x121212), "timeout_s": 2}))
    assert result["error"].startswith("timeout"), result
    wait_until(taken_out_while_the_blocker_runs, 30, "the timed-out prompt to leave ComfyUI's queue")
    assert outcome(stack, *blocker)[1]["status"] == "ok"  # never interrupted
    assert_nothing_left(stack)


def test_save_latent_returns_the_latent_file(stack):
    workflow = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/real"}},
    }
    [output] = run(stack, {"workflow": workflow})["outputs"]
    assert output["type"] == "latents" and output["filename"].endswith(".latent")
    data = base64.b64decode(output["data"])
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert header["latent_tensor"]["shape"] == [1, 4, 8, 8]
    assert_nothing_left(stack)


def test_a_cancel_mid_node_leaves_nothing_once_the_node_ends(stack):
    """A file is written, then one lanczos node runs ~10 s, deaf to the interrupt: the job answers
    `cancelled` while ComfyUI still runs it; once it ends, nothing of it is left, no next job needed."""
    workflow = empty_image(8, 8, 0x00FF00, prefix="early")
    workflow["3"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 2048, "height": 2048, "batch_size": 12, "color": 1},
    }
    workflow["4"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["3", 0],
            "upscale_method": "lanczos",
            "width": 4096,
            "height": 4096,
            "crop": "disabled",
        },
    }
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "late"}}
    job_id, ephemeral = start(stack, {"workflow": workflow}, sealed=False)  # its progress names nodes
    wait_until(lambda: current_node(stack, job_id) == "4", 120, "ComfyUI to run the lanczos node")
    cancel(stack, job_id)
    state, _ = outcome(stack, job_id, ephemeral)
    assert state.lower() == "cancelled"
    assert comfy(stack, "/queue").json()["queue_running"] != []  # the node still runs
    wait_until(lambda: nothing_left(stack), 60, "the node to end and its prompt to leave nothing")


def test_comfyui_killed_mid_job_answers_comfy_restarted_and_the_next_job_runs(stack):
    rpc = supervisor_state.rpc(stack.socket).supervisor
    before = rpc.getProcessInfo("comfy")["pid"]  # the relay; ComfyUI is its child
    [comfyui] = stack.children(before)
    job_id, ephemeral = start(stack, {"workflow": slow_workflow(8)})
    wait_until(lambda: comfy(stack, "/queue").json()["queue_running"] != [], 30, "the prompt to run")
    os.kill(comfyui, signal.SIGKILL)
    _, result = outcome(stack, job_id, ephemeral)
    assert result["error"].startswith("comfy_restarted"), result
    after = run(stack, {"workflow": empty_image(10, 10, 0x0000FF)})
    assert decode_png(after["outputs"][0]).convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    assert rpc.getProcessInfo("comfy")["pid"] != before
    assert_nothing_left(stack)


def test_comfyui_killed_with_a_job_queued_fails_only_the_running_one(stack):
    """The queued job had not started: it runs once ComfyUI is back, and answers its pixels."""
    rpc = supervisor_state.rpc(stack.socket).supervisor
    wait_until(lambda: answers(stack, "/system_stats"), 120, "ComfyUI to answer")
    [comfyui] = stack.children(rpc.getProcessInfo("comfy")["pid"])
    doomed = start(stack, {"workflow": slow_workflow(8, color=0x202020)})
    wait_until(lambda: comfy(stack, "/queue").json()["queue_running"] != [], 30, "the prompt to run")
    queued = start(stack, {"workflow": empty_image(11, 7, 0x00FF00)})
    wait_until(lambda: answers(stack, "/queue") and pending(stack) != [], 30, "the next job to queue")
    os.kill(comfyui, signal.SIGKILL)
    assert outcome(stack, *doomed)[1]["error"].startswith("comfy_restarted")
    image = decode_png(outcome(stack, *queued)[1]["outputs"][0])
    assert image.size == (11, 7) and image.convert("RGB").getpixel((2, 2)) == (0, 255, 0)
    assert_nothing_left(stack)

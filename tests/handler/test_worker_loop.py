"""Serverless mode as RunPod runs it: the runpod SDK's real worker loop under supervisord takes
jobs from the local RunPod queue and runs them in the ComfyUI stand-in."""

import json
import os
import time

import pytest
import requests

from client.envelope_client import open_answer, seal_request
from services.comfy import supervisor_state
from tests.stack import Stack, wait_until
from tests.workflows import decode_png, empty_image, invert_upload, png_b64, with_knob

API_KEY = "local-test-key"


@pytest.fixture(scope="module")
def stack():
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "JOB_TIMEOUT_S": "60", "API_KEY": API_KEY}
    stack = Stack("serverless", env).ready()
    yield stack
    stack.stop()


def call(stack, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return requests.request(method, f"{stack.url}/v2/LOCAL/{path}", headers=headers, timeout=90, **kwargs)


def runsync(stack, payload, **params):
    return call(stack, "POST", "runsync", json={"input": payload}, params=params).json()


def test_runsync_returns_the_png(stack):
    job = runsync(stack, {"workflow": empty_image(40, 20, 0xFF00FF)})
    assert job["status"] == "COMPLETED", job
    assert set(job) >= {"id", "status", "delayTime", "executionTime", "output"}
    image = decode_png(job["output"]["outputs"][0])
    assert image.size == (40, 20) and image.convert("RGB").getpixel((3, 3)) == (255, 0, 255)


def test_encrypted_upload_invert(stack):
    payload = {"workflow": invert_upload("in.png"), "images": [{"name": "in.png", "image": png_b64(32, 24)}]}
    request, ephemeral = seal_request(payload, stack.public_key)
    job = runsync(stack, request)
    assert job["status"] == "COMPLETED" and job["output"]["encrypted"] is True
    result = open_answer(job["output"], ephemeral, stack.public_key)
    assert decode_png(result["outputs"][0]).convert("RGB").getpixel((0, 0)) == (0, 255, 255)


def test_errors_are_failed_jobs_with_a_code(stack):
    job = runsync(stack, {"workflow": with_knob("StandinFail", message="nope")})
    assert job["status"] == "FAILED" and job["error"] == "execution_failed: node 2 (StandinFail): nope"
    job = runsync(stack, {"nodes": [], "links": []})
    assert job["status"] == "FAILED" and job["error"].startswith("invalid_workflow")
    assert "Traceback" not in str(job)


def test_run_then_status(stack):
    started = call(stack, "POST", "run", json={"input": {"workflow": empty_image(12, 12, 1)}}).json()
    assert started["status"] == "IN_QUEUE"
    wait_until(
        lambda: call(stack, "GET", f"status/{started['id']}").json()["status"] == "COMPLETED", 30, "COMPLETED"
    )
    assert decode_png(call(stack, "GET", f"status/{started['id']}").json()["output"]["outputs"][0]).size == (
        12,
        12,
    )


def test_runsync_short_wait_then_status_with_progress(stack):
    job = runsync(stack, {"workflow": with_knob("StandinSlow", color=2, seconds=4, steps=8)}, wait=1000)
    assert job["status"] in ("IN_QUEUE", "IN_PROGRESS")
    seen = []

    def done():
        status = call(stack, "GET", f"status/{job['id']}").json()
        if status["status"] == "IN_PROGRESS" and status.get("output"):
            seen.append(status["output"])
        return status["status"] == "COMPLETED"

    wait_until(done, 30, "COMPLETED")
    assert any(p.get("node") == "2" and p.get("max") == 8 for p in seen), seen


def test_cancel_interrupts_comfy(stack):
    job = call(
        stack,
        "POST",
        "run",
        json={"input": {"workflow": with_knob("StandinSlow", color=3, seconds=30, steps=60)}},
    ).json()
    comfy_queue = f"http://127.0.0.1:{stack.comfy_port}/queue"
    wait_until(
        lambda: requests.get(comfy_queue, timeout=5).json()["queue_running"] != [], 20, "the prompt to run"
    )
    assert call(stack, "POST", f"cancel/{job['id']}").json()["status"] == "CANCELLED"
    wait_until(
        lambda: requests.get(comfy_queue, timeout=5).json()["queue_running"] == [], 15, "ComfyUI to stop it"
    )
    assert runsync(stack, {"workflow": empty_image(7, 7)})["status"] == "COMPLETED"


def test_wrong_key_is_refused(stack):
    response = requests.post(
        f"{stack.url}/v2/LOCAL/runsync",
        json={"input": {}},
        headers={"Authorization": "Bearer nope"},
        timeout=10,
    )
    assert response.status_code == 401


def test_official_runpod_client_works_against_the_local_queue(stack):
    import subprocess
    import sys

    script = (
        "import runpod, json\n"
        f"runpod.api_key = {API_KEY!r}\n"
        "endpoint = runpod.Endpoint('LOCAL')\n"
        f"out = endpoint.run_sync({{'workflow': {empty_image(6, 6, 9)!r}}}, timeout=60)\n"
        "print(json.dumps({'n': len(out['outputs']), 'status': out['status']}))\n"
        "job = endpoint.run({'nodes': [], 'links': []})\n"
        "print(job.status(), json.dumps(job.output(timeout=60)))\n"
    )
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": f"{stack.url}/v2"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == '{"n": 1, "status": "ok"}'
    assert lines[-1].split(" ", 1)[0] in ("IN_QUEUE", "IN_PROGRESS", "FAILED")


def test_health_counts_jobs(stack):
    time.sleep(0.2)
    health = call(stack, "GET", "health").json()
    assert health["jobs"]["completed"] >= 3 and health["jobs"]["failed"] >= 2


def test_an_encrypted_job_leaves_nothing_in_the_logs(stack):
    marker = "otter-secret-5521"
    payload = {
        "workflow": {**invert_upload(f"{marker}.png")},
        "images": [{"name": f"{marker}.png", "image": png_b64(9, 9, (4, 5, 6))}],
    }
    request, ephemeral = seal_request(payload, stack.public_key)
    job = runsync(stack, request)
    result = open_answer(job["output"], ephemeral, stack.public_key)
    assert result["status"] == "ok"
    time.sleep(0.5)
    output_b64 = result["outputs"][0]["data"]
    assert marker not in stack.log and output_b64[:40] not in stack.log and stack.private_key not in stack.log
    history = f"http://127.0.0.1:{stack.comfy_port}/history"
    wait_until(lambda: requests.get(history, timeout=5).json() == {}, 5, "the clean-up after the answer")


def test_a_prompt_comfyui_does_not_take_in_time_is_comfy_busy_and_keeps_the_worker(busy_stack):
    job = runsync(busy_stack, {"workflow": with_knob("StandinSlowSubmit", color=12, seconds=4)})
    assert job["status"] == "FAILED" and job["error"].startswith(
        "comfy_busy: ComfyUI answers but took no prompt"
    )
    assert "refresh_worker" not in json.dumps(job)
    handler = supervisor_state.rpc(busy_stack.socket).supervisor.getProcessInfo("handler")["pid"]
    job = runsync(busy_stack, {"workflow": empty_image(10, 10)})  # the same worker takes the next job
    assert job["status"] == "COMPLETED", job
    assert supervisor_state.rpc(busy_stack.socket).supervisor.getProcessInfo("handler")["pid"] == handler
    wait_until(
        lambda: (
            requests.get(f"http://127.0.0.1:{busy_stack.comfy_port}/queue", timeout=5).json()
            == {"queue_running": [], "queue_pending": []}
        ),
        20,
        "the late prompt to be taken out or done",
    )


@pytest.fixture(scope="module")
def busy_stack():
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": API_KEY, "COMFY_SUBMIT_TIMEOUT_S": "1.5"}
    stack = Stack("serverless", env).ready()
    yield stack
    stack.stop()

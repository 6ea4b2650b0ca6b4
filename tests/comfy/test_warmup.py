"""WARMUP_WORKFLOW: run after each ComfyUI (re)start, before any job; /readyz 503 until it
ended; a failure is logged with its code and shown in /healthz; a bad file stops the start."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import requests

from tests.stack import ROOT, STANDIN, Stack, wait_until
from tests.workflows import empty_image, slow_workflow, with_knob

KEY = "warm-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def warmup_file(tmp_path_factory, workflow) -> str:
    path = tmp_path_factory.mktemp("warmup") / "warmup.json"
    path.write_text(json.dumps(workflow))
    return str(path)


def comfy_running_a_prompt(stack) -> bool:
    try:
        return bool(
            requests.get(f"http://127.0.0.1:{stack.comfy_port}/queue", timeout=5).json()["queue_running"]
        )
    except requests.ConnectionError:  # still booting
        return False


def comfy_history(stack) -> dict:
    return requests.get(f"http://127.0.0.1:{stack.comfy_port}/history", timeout=5).json()


def healthz(stack) -> dict:
    return requests.get(f"{stack.url}/healthz", timeout=10).json()["comfy"]["warmup"]


@pytest.fixture(scope="module")
def slow_warmup(tmp_path_factory, backend):
    workflow = with_knob("StandinSlow", seconds=4, steps=4) if backend is STANDIN else slow_workflow(8)
    return warmup_file(tmp_path_factory, workflow)


def test_a_pod_is_not_ready_and_holds_jobs_until_the_warmup_ran_after_each_start(backend, slow_warmup):
    env = {**backend.env, "DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": KEY}
    stack = Stack("api", {**env, "WARMUP_WORKFLOW": slow_warmup}, backend=backend)
    with stack.start(wait_for=("api", "comfy")):
        wait_until(lambda: comfy_running_a_prompt(stack), 60, "ComfyUI to run the warm-up")
        assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 503
        assert healthz(stack)["state"] == "running"
        answers: list = []
        job = threading.Thread(
            target=lambda: answers.append(
                requests.post(f"{stack.url}/run", json={"workflow": empty_image()}, headers=AUTH, timeout=120)
            )
        )
        job.start()
        wait_until(lambda: requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200, 120, "ready")
        assert healthz(stack) == {"state": "done", "error": None, "runs": 1}
        job.join(120)
        assert answers[0].status_code == 200 and answers[0].json()["status"] == "ok"
        wait_until(lambda: comfy_history(stack) == {}, 10, "the warm-up's history to be cleaned up")
        assert requests.post(f"{stack.url}/comfy/restart", headers=AUTH, timeout=300).status_code == 200
        assert healthz(stack) == {"state": "done", "error": None, "runs": 2}
        assert "warm-up done" in stack.log


def test_a_failing_warmup_is_logged_with_its_code_shown_and_jobs_still_run(tmp_path_factory):
    failing = warmup_file(tmp_path_factory, with_knob("StandinFail", message="no checkpoint"))
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "WARMUP_WORKFLOW": failing}
    with Stack("api", env).ready() as stack:
        assert healthz(stack) == {"state": "failed", "error": "execution_failed", "runs": 1}
        assert "warm-up failed: execution_failed" in stack.log
        assert (
            requests.post(f"{stack.url}/run", json={"workflow": empty_image()}, timeout=60).json()["status"]
            == "ok"
        )


def test_the_serverless_worker_takes_no_job_before_the_warmup_ended(tmp_path_factory):
    slow = warmup_file(tmp_path_factory, with_knob("StandinSlow", seconds=5, steps=5))
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "WARMUP_WORKFLOW": slow}
    stack = Stack("serverless", env)
    with stack.start(wait_for=("handler", "localqueue", "comfy")):
        stack.wait_http("/v2/LOCAL/health")
        job = requests.post(
            f"{stack.url}/v2/LOCAL/run", json={"input": {"workflow": empty_image()}}, timeout=10
        ).json()
        wait_until(lambda: comfy_running_a_prompt(stack), 60, "ComfyUI to run the warm-up")
        status = requests.get(f"{stack.url}/v2/LOCAL/status/{job['id']}", timeout=10).json()
        assert status["status"] == "IN_QUEUE"

        def completed() -> bool:
            status.update(requests.get(f"{stack.url}/v2/LOCAL/status/{job['id']}", timeout=10).json())
            return status["status"] == "COMPLETED"

        wait_until(completed, 60, "the job to run after the warm-up")
        assert status["output"]["status"] == "ok"


@pytest.mark.parametrize(
    "content,why",
    [("{not json", "is not a JSON file"), (json.dumps({"nodes": [], "links": []}), "UI graph export")],
)
def test_a_bad_warmup_file_stops_the_start_naming_the_variable(tmp_path, content, why):
    path = tmp_path / "warmup.json"
    path.write_text(content)
    env = {
        "PATH": "/usr/bin:/bin",
        "ENCRYPTION_REQUIRED": "0",
        "WARMUP_WORKFLOW": str(path),
        "RUN_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.container.entrypoint", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert f"configuration error: WARMUP_WORKFLOW={path}: " in result.stderr and why in result.stderr

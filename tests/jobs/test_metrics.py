"""GET /metrics in both modes (the pod API, the local queue) after a few real jobs."""

from __future__ import annotations

import re

import pytest
import requests

from services.comfy import supervisor_state
from tests.file_server import FileServer
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET_PREFIX = "private-prefix-of-a-user"


@pytest.fixture(scope="module", params=["api", "serverless"])
def stack(request):
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": KEY, "ALLOW_PRIVATE_DOWNLOADS": "1"}
    stack = Stack(request.param, env).ready()
    yield stack
    stack.stop()


def run(stack, workflow):
    if stack.mode == "api":
        return requests.post(f"{stack.url}/run", json={"workflow": workflow}, headers=AUTH, timeout=60).json()
    answer = requests.post(
        f"{stack.url}/v2/LOCAL/runsync", json={"input": {"workflow": workflow}}, headers=AUTH, timeout=60
    ).json()
    return answer.get("output") or answer


def scrape(stack) -> dict[str, float]:
    page = requests.get(f"{stack.url}/metrics", headers=AUTH, timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    assert SECRET_PREFIX not in page.text
    return {
        name: float(value)
        for name, value in re.findall(r"^(\S+) (\S+)$", page.text, re.MULTILINE)
        if not name.startswith("#")
    }


def test_metrics_need_the_api_key(stack):
    assert requests.get(f"{stack.url}/metrics", timeout=10).status_code == 401


def test_jobs_by_outcome_and_code_durations_and_readiness(stack):
    before = scrape(stack)
    ok = 'comfy_worker_jobs_total{code="",outcome="completed"}'
    failed = 'comfy_worker_jobs_total{code="execution_failed",outcome="failed"}'
    assert run(stack, empty_image(prefix=SECRET_PREFIX))["status"] == "ok"
    assert run(stack, empty_image(prefix=SECRET_PREFIX))["status"] == "ok"
    assert run(stack, with_knob("StandinFail", message=SECRET_PREFIX))["error"].startswith("execution_failed")
    after = scrape(stack)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[failed] - before.get(failed, 0) == 1
    count = "comfy_worker_job_duration_seconds_count"
    assert after[count] - before.get(count, 0) == 3
    assert after["comfy_worker_jobs_in_flight"] == 0
    assert after["comfy_worker_ready"] == 1


RESTARTS = 'comfy_worker_comfyui_restarts_total{comfy_instance="0"}'


def test_a_comfyui_restart_is_counted(stack):
    before = scrape(stack)[RESTARTS]
    rpc = supervisor_state.rpc(stack.socket)
    rpc.supervisor.stopProcess("comfy")
    rpc.supervisor.startProcess("comfy")
    wait_until(lambda: scrape(stack)["comfy_worker_ready"] == 1, 60, "ComfyUI back")
    after = scrape(stack)
    assert after[RESTARTS] == before + 1 and after['comfy_worker_comfyui_ready{comfy_instance="0"}'] == 1


def test_download_bytes_and_failures(stack):
    if stack.mode != "api":  # serverless has no /download (README: Pod API), nor its metrics
        assert "comfy_worker_download_bytes_total" not in scrape(stack)
        return
    server = FileServer()
    server.files = {"m.safetensors": b"m" * 300_000}
    try:
        before = scrape(stack)
        items = [
            {"type": "loras", "url": f"{server.url}/file/m.safetensors"},
            {
                "type": "vae",
                "url": f"{server.url}/file/m.safetensors",
                "target": "bad.safetensors",
                "sha256": "0" * 64,
            },
        ]
        requests.post(f"{stack.url}/download", json={"items": items, "wait": True}, headers=AUTH, timeout=60)
        after = scrape(stack)
        assert (
            after["comfy_worker_download_bytes_total"] - before["comfy_worker_download_bytes_total"]
            == 600_000
        )
        failures = 'comfy_worker_download_failures_total{code="checksum_mismatch"}'
        assert after[failures] - before.get(failures, 0) == 1
    finally:
        server.stop()


def test_a_cancelled_job_is_counted_cancelled(stack):
    """A pod's cancelled job answers `interrupted`: counted as cancelled, not as failed (the
    local queue sees the cancel itself, with no code)."""
    code = "interrupted" if stack.mode == "api" else ""
    cancelled = f'comfy_worker_jobs_total{{code="{code}",outcome="cancelled"}}'
    before = scrape(stack).get(cancelled, 0)
    slow = {"workflow": with_knob("StandinSlow", color=7, seconds=60, steps=60)}
    if stack.mode == "api":
        job = requests.post(f"{stack.url}/run?async=1", json=slow, headers=AUTH, timeout=10).json()["id"]
        status, cancel = f"{stack.url}/jobs/{job}", f"{stack.url}/jobs/{job}/cancel"
        wait_until(
            lambda: requests.get(status, headers=AUTH, timeout=10).json()["state"] == "running", 30, "run"
        )
    else:
        job = requests.post(
            f"{stack.url}/v2/LOCAL/run", json={"input": slow}, headers=AUTH, timeout=10
        ).json()
        status, cancel = (
            f"{stack.url}/v2/LOCAL/status/{job['id']}",
            f"{stack.url}/v2/LOCAL/cancel/{job['id']}",
        )
        wait_until(
            lambda: requests.get(status, headers=AUTH, timeout=10).json()["status"] == "IN_PROGRESS",
            30,
            "run",
        )
    requests.post(cancel, headers=AUTH, timeout=10)
    wait_until(lambda: scrape(stack).get(cancelled, 0) == before + 1, 30, "the cancel counted")
    assert scrape(stack)["comfy_worker_jobs_in_flight"] == 0

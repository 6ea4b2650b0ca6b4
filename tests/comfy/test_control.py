"""POST /comfy/restart and /comfy/free through the live pod API (the stand-in in make test, the
real ComfyUI in make test-real)."""

from __future__ import annotations

import pytest
import requests

from services.api.app import create_app
from services.core import config
from tests.stack import STANDIN, Stack, wait_until
from tests.workflows import decode_png, empty_image, slow_workflow, with_knob

KEY = "control-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def stack(backend):
    env = {**backend.env, "DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEY": KEY, "JOB_TIMEOUT_S": "120"}
    stack = Stack("api", env, backend=backend).ready()
    yield stack
    stack.stop()


def run(stack, workflow):
    return requests.post(f"{stack.url}/run", json={"workflow": workflow}, headers=AUTH, timeout=150).json()


def cached_nodes(result) -> list[str]:
    [cached] = [
        data["nodes"] for kind, data in result["history"]["status"]["messages"] if kind == "execution_cached"
    ]
    return cached


def test_free_empties_comfyuis_cache(stack):
    workflow = empty_image(24, 24, 0x445566, prefix="free")
    run(stack, workflow)
    assert "1" in cached_nodes(run(stack, workflow))  # ComfyUI kept the image of the first run
    freed = requests.post(f"{stack.url}/comfy/free", headers=AUTH, timeout=30)
    assert freed.status_code == 200 and freed.json() == {"freed": True}
    assert cached_nodes(run(stack, workflow)) == []


def test_restart_answers_when_comfyui_answers_and_only_the_running_job_gets_comfy_restarted(stack, backend):
    """The job queued behind the running one never started: it runs on the new ComfyUI."""
    slow = with_knob("StandinSlow", seconds=30, steps=30) if backend is STANDIN else slow_workflow(36)

    def submit(workflow) -> str:
        answer = requests.post(
            f"{stack.url}/run", params={"async": "1"}, json={"workflow": workflow}, headers=AUTH, timeout=30
        )
        return answer.json()["id"]

    def comfy_queue() -> dict:
        return requests.get(f"http://127.0.0.1:{stack.comfy_port}/queue", timeout=5).json()

    started = submit(slow)
    wait_until(lambda: bool(comfy_queue()["queue_running"]), 30, "ComfyUI to run the slow prompt")
    queued = submit(empty_image(9, 7, 0x00FF00))
    wait_until(lambda: bool(comfy_queue()["queue_pending"]), 30, "the next job to queue behind it")
    restarted = requests.post(f"{stack.url}/comfy/restart", headers=AUTH, timeout=300)
    assert restarted.status_code == 200 and restarted.json()["restarted"] is True
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    jobs: dict = {}

    def ended(job_id: str) -> bool:
        jobs[job_id] = requests.get(f"{stack.url}/jobs/{job_id}", headers=AUTH, timeout=10).json()
        return jobs[job_id]["state"] in ("completed", "failed")

    wait_until(lambda: ended(started), 60, "the job that was in ComfyUI to answer")
    assert jobs[started]["result"]["error"].startswith("comfy_restarted")
    wait_until(lambda: ended(queued), 60, "the queued job to answer")
    assert jobs[queued]["state"] == "completed", jobs[queued]
    [output] = jobs[queued]["result"]["outputs"]
    assert decode_png(output).convert("RGB").getpixel((4, 3)) == (0, 255, 0)
    assert run(stack, empty_image(8, 8))["status"] == "ok"


def test_both_need_the_api_key(stack):
    for route in ("/comfy/restart", "/comfy/free"):
        assert requests.post(f"{stack.url}{route}", timeout=10).status_code == 401


def test_under_dry_run_there_is_no_comfyui_to_restart_or_free(tmp_path):
    settings = config.load(
        {
            "DRY_RUN": "1",
            "ENCRYPTION_REQUIRED": "0",
            "RUN_DIR": str(tmp_path),
            "COMFYUI_MODEL_DIR": str(tmp_path),
        }
    )
    client = create_app(settings).test_client()
    for route in ("/comfy/restart", "/comfy/free"):
        answer = client.post(route)
        assert answer.status_code == 409 and answer.json["error"].startswith("not_available: DRY_RUN=1")

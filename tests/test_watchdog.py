"""Restart guarantees under the real supervisord and conf, with the stand-in's fault knobs:
a hung ComfyUI is restarted, a slow boot is not, a crash leaves no orphans, a FATAL program
ends the container with a non-zero code."""

import os
import threading
import time
import uuid

import pytest
import requests

from services import supervisor_state
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

WATCH = {"WATCH_GRACE_S": "2", "WATCH_FAILS": "2", "WATCH_PROBE_TIMEOUT_S": "1"}


def comfy_pid(stack):
    return supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]


def hang_comfy(stack):
    """Send a hanging prompt straight to ComfyUI (no job of ours waits for it)."""
    body = {"prompt": with_knob("StandinHang", color=int(uuid.uuid4().int % 1000)), "client_id": "x"}
    requests.post(f"http://127.0.0.1:{stack.comfy_port}/prompt", json=body, timeout=5)


@pytest.fixture(scope="module")
def stack():
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "STANDIN_HELPER": "1", "COMFY_LOG": "1", **WATCH}
    stack = Stack("api", env).start(wait_for=("api", "comfy"))
    stack.wait_http("/readyz")
    yield stack
    stack.stop()


def test_a_hung_comfy_at_idle_is_restarted(stack):
    before = comfy_pid(stack)
    hang_comfy(stack)
    wait_until(lambda: comfy_pid(stack) not in (before, 0), 60, "a new comfy")
    stack.wait_http("/readyz", timeout=60)
    assert "restarting it" in stack.log


def test_a_job_under_a_hung_comfy_gets_comfy_restarted_then_the_next_job_runs(stack):
    response = requests.post(
        stack.url + "/run", json={"workflow": with_knob("StandinHang", color=77)}, timeout=120
    )
    assert response.status_code == 503 and response.json()["error"].startswith("comfy_restarted"), (
        response.text
    )
    stack.wait_http("/readyz", timeout=60)
    assert (
        requests.post(stack.url + "/run", json={"workflow": empty_image(9, 9)}, timeout=60).status_code == 200
    )


def test_a_crash_leaves_no_orphan_processes(stack):
    helper = int(stack.log.rsplit("helper pid ", 1)[1].split()[0])
    assert os.path.exists(f"/proc/{helper}")
    response = requests.post(
        stack.url + "/run", json={"workflow": with_knob("StandinCrash", color=5)}, timeout=60
    )
    assert response.json()["error"].startswith("comfy_restarted")
    wait_until(lambda: not os.path.exists(f"/proc/{helper}"), 15, "the orphaned helper to be killed")
    assert "killed leftover process group" in stack.log


def test_a_boot_slower_than_startsecs_is_not_restarted():
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "STANDIN_BOOT_SECONDS": "8",
        "WATCH_GRACE_S": "20",
        "WATCH_FAILS": "1",
    }
    stack = Stack("api", env).start(wait_for=("api", "comfy"))
    try:
        first = comfy_pid(stack)
        stack.wait_http("/readyz", timeout=60)
        assert comfy_pid(stack) == first and "restarting it" not in stack.log
    finally:
        stack.stop()


def test_a_program_that_keeps_failing_ends_the_container_non_zero():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "COMFYUI_DIR": "/nonexistent"}).start()
    try:
        assert stack.proc.wait(timeout=90) == 1
        assert "comfy is FATAL" in stack.log and "exiting 1" in stack.log
    finally:
        stack.stop()


def test_sigterm_during_a_pod_job_stops_everything_within_10_s():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}).start(wait_for=("api", "comfy"))
    stack.wait_http("/readyz")
    answers = []

    def long_job():
        try:
            answers.append(
                requests.post(
                    stack.url + "/run",
                    json={"workflow": with_knob("StandinSlow", seconds=30, steps=30)},
                    timeout=60,
                )
            )
        except requests.RequestException as exc:
            answers.append(exc)

    thread = threading.Thread(target=long_job)
    thread.start()
    wait_until(
        lambda: (
            requests.get(f"http://127.0.0.1:{stack.comfy_port}/queue", timeout=5).json()["queue_running"]
            != []
        ),
        20,
        "the job",
    )
    started = time.monotonic()
    assert stack.stop(timeout=15) == 0
    assert time.monotonic() - started < 10
    thread.join(30)
    assert answers and not (hasattr(answers[0], "status_code") and answers[0].status_code == 200)

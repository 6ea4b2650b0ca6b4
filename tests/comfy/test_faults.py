"""ComfyUI dying or hanging under a job: a clear error code within seconds, never a hang, and
the next job runs once supervisord has ComfyUI back."""

import contextlib
import os
import signal
import threading
import time

import pytest
import requests

from services.comfy import supervisor_state
from tests.stack import Stack, wait_until
from tests.workflows import decode_png, empty_image, with_knob


@pytest.fixture(scope="module")
def stack():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "JOB_TIMEOUT_S": "60"}).ready()
    yield stack
    stack.stop()


def run(stack, payload):
    started = time.monotonic()
    response = requests.post(stack.url + "/run", json=payload, timeout=90)
    return response, time.monotonic() - started


def comfy_pid(stack):
    return supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]


def test_comfy_crash_mid_job_answers_comfy_restarted_and_the_next_job_runs(stack):
    before = comfy_pid(stack)
    response, elapsed = run(stack, {"workflow": with_knob("StandinCrash")})
    assert response.status_code == 503 and response.json()["error"].startswith("comfy_restarted")
    assert elapsed < 15
    response, _ = run(stack, {"workflow": empty_image(10, 10, 0x00FF00)})
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["outputs"][0]).convert("RGB").getpixel((0, 0)) == (0, 255, 0)
    assert comfy_pid(stack) != before


def test_comfyui_killed_with_jobs_queued_behind_fails_only_the_running_one(stack):
    """The job queued in ComfyUI behind the running one and the one waiting in the worker
    (an instance holds two) never started: they run once it is back."""
    [comfyui] = stack.children(comfy_pid(stack))
    answers = {}

    def send(name, workflow):
        thread = threading.Thread(
            target=lambda: answers.setdefault(name, run(stack, {"workflow": workflow})[0])
        )
        thread.start()
        return thread

    threads = [send("running", with_knob("StandinSlow", color=9, seconds=30, steps=30))]
    wait_until(lambda: comfy(stack)["queue_running"] != [], 30, "the first job to run")
    threads += [send(rgb, empty_image(5, 5, int(rgb, 16))) for rgb in ("FF0000", "0000FF")]
    wait_until(
        lambda: len(comfy(stack)["queue_pending"]) == 1 and waiting(stack) == 1,
        30,
        "one job queued behind it, one waiting in the worker",
    )
    os.kill(comfyui, signal.SIGKILL)
    for thread in threads:
        thread.join(90)
    assert answers["running"].json()["error"].startswith("comfy_restarted"), answers["running"].text
    for rgb in ("FF0000", "0000FF"):
        assert answers[rgb].status_code == 200, answers[rgb].text
        pixel = decode_png(answers[rgb].json()["outputs"][0]).convert("RGB").getpixel((0, 0))
        assert pixel == tuple(bytes.fromhex(rgb))
    assert "it runs again" in stack.log


def waiting(stack):
    page = requests.get(stack.url + "/metrics", timeout=5).text
    [line] = [line for line in page.splitlines() if line.startswith("comfy_worker_jobs_waiting ")]
    return int(float(line.split()[1]))


def comfy(stack):
    return requests.get(f"http://127.0.0.1:{stack.comfy_port}/queue", timeout=5).json()


def test_hung_comfy_answers_timeout_within_bounds(stack):
    response, elapsed = run(stack, {"workflow": with_knob("StandinHang", color=8), "timeout_s": 2})
    assert response.status_code == 504 and response.json()["error"].startswith("timeout")
    assert elapsed < 25
    rpc = supervisor_state.rpc(stack.socket).supervisor  # the watchdog's job; done by hand here
    rpc.stopProcess("comfy")
    rpc.startProcess("comfy")
    response, _ = run(stack, {"workflow": empty_image(11, 11)})
    assert response.status_code == 200, response.text


def test_readyz_follows_comfy(stack):
    assert requests.get(stack.url + "/readyz", timeout=5).status_code == 200
    rpc = supervisor_state.rpc(stack.socket).supervisor
    rpc.stopProcess("comfy")
    seen = []  # a probe answers the state the health thread keeps

    def stopped():
        seen.append(requests.get(stack.url + "/readyz", timeout=5))
        return seen[-1].json()["comfy"]["state"] == "STOPPED"

    wait_until(stopped, 10, "/readyz to see ComfyUI STOPPED")
    assert seen[-1].status_code == 503
    rpc.startProcess("comfy")
    stack.wait_http("/readyz")


def test_a_comfyui_restarted_between_two_jobs_does_not_fail_the_next(stack):
    """The websocket kept from the last job died with the old ComfyUI: the next job reconnects."""
    first, _ = run(stack, {"workflow": empty_image(6, 6, 0x010203)})
    assert first.status_code == 200, first.text
    before = comfy_pid(stack)
    rpc = supervisor_state.rpc(stack.socket).supervisor
    rpc.stopProcess("comfy")
    rpc.startProcess("comfy")
    assert comfy_pid(stack) != before
    stack.wait_http("/readyz", timeout=60)
    response, _ = run(stack, {"workflow": empty_image(7, 7, 0x0000FF)})
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["outputs"][0]).convert("RGB").getpixel((0, 0)) == (0, 0, 255)


def test_probes_answer_at_once_while_comfyui_does_not(stack):
    """A frozen ComfyUI (SIGSTOP: its port takes connections, nothing answers): every probe
    answers within a platform probe's 1 s, and /readyz turns 503 once the refresh that runs
    beside the answers found ComfyUI silent."""
    stack.wait_http("/readyz")
    [comfyui] = stack.children(comfy_pid(stack))
    os.kill(comfyui, signal.SIGSTOP)
    try:

        def not_ready():
            assert requests.get(stack.url + "/healthz", timeout=1).status_code == 200
            return requests.get(stack.url + "/readyz", timeout=1).status_code == 503

        wait_until(not_ready, 30, "/readyz to answer 503")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(comfyui, signal.SIGCONT)
    stack.wait_http("/readyz", timeout=60)

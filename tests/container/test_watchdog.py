"""Restart guarantees under the real supervisord and conf, with the stand-in's fault knobs:
a hung ComfyUI is restarted, a slow boot is not, a crash leaves no orphans, a FATAL program
ends the container with a non-zero code."""

import os
import socket
import uuid

import pytest
import requests

from services.comfy import health, supervisor_state
from services.container.watchdog import Watchdog
from services.core import config
from tests.stack import Stack, wait_until
from tests.workflows import empty_image, with_knob

WATCH = {"WATCH_FAILS": "2", "WATCH_PROBE_TIMEOUT_S": "1"}


def comfy_pid(stack):
    return supervisor_state.rpc(stack.socket).supervisor.getProcessInfo("comfy")["pid"]


def hang_comfy(stack):
    """Send a hanging prompt straight to ComfyUI (no job of ours waits for it)."""
    body = {"prompt": with_knob("StandinHang", color=int(uuid.uuid4().int % 1000)), "client_id": "x"}
    requests.post(f"http://127.0.0.1:{stack.comfy_port}/prompt", json=body, timeout=5)


@pytest.fixture(scope="module")
def stack():
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "STANDIN_HELPER": "1",
        "COMFY_ENV": "STANDIN_HELPER",
        "COMFY_LOG": "1",
        **WATCH,
    }
    stack = Stack("api", env).ready()
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
        "COMFY_ENV": "STANDIN_BOOT_SECONDS",
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
        assert "comfy is FATAL" in stack.log and "exiting 1: program comfy" in stack.log
    finally:
        stack.stop()


def test_a_program_that_keeps_dying_after_startsecs_ends_the_container_non_zero():
    """gunicorn retries a taken port for ~5 s, then exits: supervisord never calls that FATAL."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0", "API_PORT": str(port), "WATCH_MAX_EXITS": "2"}
        stack = Stack("api", env).start()
        try:
            assert stack.proc.wait(timeout=90) == 1
            assert "api exited 2 times within 300 s" in stack.log and "exiting 1: program api" in stack.log
        finally:
            stack.stop()


def test_exits_are_counted_in_a_sliding_window(tmp_path):
    class Rpc:
        stopped = False

        def shutdown(self):
            Rpc.stopped = True

    settings = config.load(
        {
            "ENCRYPTION_REQUIRED": "0",
            "RUN_DIR": str(tmp_path),
            "WATCH_MAX_EXITS": "3",
            "WATCH_EXIT_WINDOW_S": "60",
        }
    )
    dog = Watchdog(settings)
    dog.rpc = Rpc()
    for moment in (0, 30, 70, 100):  # never 3 within 60 s
        dog.count_exit("handler", now=moment)
    assert not Rpc.stopped
    dog.count_exit("handler", now=110)  # 70, 100, 110
    assert Rpc.stopped and (tmp_path / "fatal").read_text() == "handler"


def test_a_boot_that_never_answers_ends_the_container_after_the_boot_deadline():
    env = {
        "DRY_RUN": "0",
        "ENCRYPTION_REQUIRED": "0",
        "STANDIN_BOOT_SECONDS": "600",
        "COMFY_ENV": "STANDIN_BOOT_SECONDS",
        "COMFY_BOOT_TIMEOUT_S": "6",
        "WATCH_FAILS": "1",
    }
    stack = Stack("api", env).start()
    try:
        assert stack.proc.wait(timeout=60) == 1
        assert "comfy did not answer within 6 s of starting (COMFY_BOOT_TIMEOUT_S)" in stack.log
        assert "restarting it" not in stack.log  # booting is not hanging
    finally:
        stack.stop()


def test_the_watchdogs_own_restarts_count_toward_the_crash_loop_limit(tmp_path, monkeypatch):
    class Rpc:
        restarts = 0
        stopped = False

        def getProcessInfo(self, name):
            return {"statename": "RUNNING", "pid": 42 + Rpc.restarts, "start": 0, "now": 10}

        def stopProcess(self, name):
            Rpc.restarts += 1

        def startProcess(self, name, wait):
            pass

        def shutdown(self):
            Rpc.stopped = True

    settings = config.load(
        {"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path), "WATCH_FAILS": "1", "WATCH_MAX_EXITS": "3"}
    )
    dog = Watchdog(settings)
    dog.rpc = Rpc()
    monkeypatch.setattr(health, "booted", lambda own, pid: True)  # each new ComfyUI boots, then hangs
    monkeypatch.setattr(dog, "_answers", lambda own: False)
    for _ in range(6):
        dog.check_comfy("comfy")  # first tick of a process: booted; second: a failed probe -> restart
        if Rpc.stopped:
            break
    assert (
        Rpc.restarts == 3
        and Rpc.stopped
        and last_words_of(tmp_path) == ["comfy", str(tmp_path / "comfy" / "boot.log")]
    )


def last_words_of(run_dir):
    """The fatal marker: the program that ended the container, then its boot tail (ComfyUI only)."""
    return (run_dir / "fatal").read_text().split("\n")


class Supervisor:
    """supervisord as the watchdog calls it: what it was asked to stop, whether to shut down."""

    def __init__(self):
        self.stopped, self.shut = [], False

    def stopProcess(self, name):
        self.stopped.append(name)

    def shutdown(self):
        self.shut = True


def watchdog_of(tmp_path, instances):
    settings = config.load(
        {"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path), "COMFY_INSTANCES": instances}
    )
    dog = Watchdog(settings)
    dog.rpc = Supervisor()
    return dog


def test_with_several_instances_only_the_last_one_lost_ends_the_container(tmp_path):
    dog = watchdog_of(tmp_path, "3")
    dog.give_up("comfy-1", "is FATAL")
    for moment in range(dog.settings.watch_max_exits):  # comfy-2 keeps dying
        dog.count_exit("comfy-2", now=moment)
    assert (
        dog.rpc.stopped == ["comfy-1", "comfy-2"] and not dog.rpc.shut and dog.out == {"comfy-1", "comfy-2"}
    )
    dog.give_up("comfy", "is FATAL")
    assert dog.rpc.shut and last_words_of(tmp_path) == ["comfy", str(tmp_path / "comfy" / "boot.log")]


def test_a_program_other_than_comfyui_ends_the_container_whatever_the_instances(tmp_path):
    dog = watchdog_of(tmp_path, "2")
    dog.give_up("api", "is FATAL")
    assert dog.rpc.shut and (tmp_path / "fatal").read_text() == "api"

"""The one answer to "does ComfyUI instance i take jobs": out when supervisord holds it FATAL or
STOPPED, up once the relay wrote its program's pid (or when probed, when it answers), ready when
also its warm-up ended."""

import os
import threading
import time

from services.comfy import health, supervisor_state
from services.core import config


class Warmup:
    def __init__(self, done):
        self.done = done

    def ready(self):
        return self.done


def settings(tmp_path, **env):
    return config.load({"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path), **env})


def booted_by_relay(own, pid):
    os.makedirs(own.comfy_io_dir, exist_ok=True)
    with open(own.run_layout.ready_file(own.comfy_program), "w") as handle:
        handle.write(str(pid))


def test_an_instance_is_ready_once_its_running_program_booted_and_its_warmup_ended(tmp_path):
    own = settings(tmp_path, COMFY_INSTANCES="2").instance(1)
    running = {"statename": "RUNNING", "pid": 42}
    assert not health.ready(own, running, None)  # not booted yet
    booted_by_relay(own, 41)  # an earlier process of the program booted, not this one
    assert not health.ready(own, running, None)
    booted_by_relay(own, 42)
    assert health.ready(own, running, None)
    assert not health.ready(own, running, Warmup(False)) and health.ready(own, running, Warmup(True))
    assert not health.ready(own, {"statename": "STARTING", "pid": 42}, None)
    assert not health.ready(own, None, None)
    assert os.path.dirname(own.run_layout.ready_file(own.comfy_program)) == str(tmp_path / "comfy-1")


def test_a_probe_asks_comfyui_itself_and_dry_run_has_none(tmp_path):
    own = settings(tmp_path, COMFY_PORT="1")  # nothing answers on port 1
    booted_by_relay(own, 7)
    running = {"statename": "RUNNING", "pid": 7}
    assert health.ready(own, running, None) and not health.ready(own, running, None, probe_s=0.5)
    assert not health.ready(settings(tmp_path, DRY_RUN="1"), running, None)


def test_fatal_and_stopped_programs_are_out_of_the_pool():
    assert health.out("FATAL") and health.out("STOPPED")
    assert not any(health.out(state) for state in ("RUNNING", "STARTING", "BACKOFF", "EXITED"))


def test_a_stopped_program_is_out_at_once_while_another_instance_s_probe_still_waits(tmp_path, monkeypatch):
    """Probes wait up to PROBE_S on a busy ComfyUI; what supervisord says must not wait for them."""
    own = settings(tmp_path, COMFY_INSTANCES="2")
    for number in (0, 1):
        booted_by_relay(own.instance(number), 10 + number)
    infos = {
        "comfy": {"name": "comfy", "statename": "RUNNING", "pid": 10},
        "comfy-1": {"name": "comfy-1", "statename": "RUNNING", "pid": 11},
    }
    monkeypatch.setattr(supervisor_state, "process_infos", lambda _socket: dict(infos))
    answering = threading.Event()
    answering.set()
    monkeypatch.setattr(health, "answers", lambda _own, _timeout: answering.wait(30))
    watched = health.ComfyHealth(own)
    try:
        assert [view["ready"] for view in watched.read(fresh=True)["instances"]] == [True, True]
        answering.clear()  # instance 1 now takes its time to answer
        infos["comfy"] = {"name": "comfy", "statename": "STOPPED", "pid": 0}
        watched.changed()
        deadline = time.monotonic() + 10
        while watched.read()["instances"][0]["ready"] and time.monotonic() < deadline:
            time.sleep(0.01)
        first = watched.read()["instances"][0]
        assert first["state"] == "STOPPED" and not first["ready"]
        assert not answering.is_set()  # seen while the other probe still waited
    finally:
        answering.set()

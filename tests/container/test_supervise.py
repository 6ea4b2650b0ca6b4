"""PID 1 (services.container.supervise) on a stop signal: it drains, then stops supervisord.
SIGTERM goes to the entrypoint only, as `docker stop` and Kubernetes send it; real supervisord,
gunicorn and the ComfyUI stand-in."""

import contextlib
import os
import signal
import threading
import time

import requests

from services.comfy import supervisor_state
from services.container.supervise import Supervision
from services.core import drain
from services.core.run_dir import RunDir
from services.jobs import access
from tests.stack import STANDIN, Stack, wait_until
from tests.workflows import empty_image, slow_workflow, with_knob


def slow(seconds, color=0):
    return {"workflow": with_knob("StandinSlow", color=color, seconds=seconds, steps=max(2, seconds * 2))}


def comfy_running(stack):
    """What ComfyUI runs now; nothing while it does not listen yet."""
    return comfy_queue(stack)["queue_running"]


def comfy_queue(stack):
    try:
        return requests.get(f"http://127.0.0.1:{stack.comfy_port}/queue", timeout=5).json()
    except requests.ConnectionError:
        return {"queue_running": [], "queue_pending": []}


def in_thread(call):
    """Run `call` now; the list gets its answer (or its exception) when it returns."""
    answers = []

    def run():
        try:
            answers.append(call())
        except requests.RequestException as exc:
            answers.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return answers, thread


def test_sigterm_lets_two_sync_jobs_and_an_async_one_finish_refuses_new_work_and_exits_0():
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "DRAIN_TIMEOUT_S": "90"}).ready()
    try:
        sync = [
            in_thread(lambda n=n: requests.post(stack.url + "/run", json=slow(2, color=n), timeout=60))
            for n in (1, 2)
        ]
        job = requests.post(
            stack.url + "/run", params={"async": "1"}, json=slow(2, color=3), timeout=10
        ).json()
        wait_until(lambda: comfy_running(stack) != [], 20, "a job to run in ComfyUI")
        stack.terminate()
        wait_until(
            lambda: requests.get(stack.url + "/readyz", timeout=5).status_code == 503, 10, "/readyz 503"
        )

        refused = requests.post(stack.url + "/run", json=slow(1), timeout=10)
        assert refused.status_code == 503 and refused.json()["error"].startswith("draining")
        assert refused.headers["Retry-After"] == "5"
        probes = []
        for answers, thread in sync:
            while thread.is_alive():  # the probes all along the drain
                ready = requests.get(stack.url + "/readyz", timeout=5)
                health = requests.get(stack.url + "/healthz", timeout=5)
                probes.append((ready.status_code, ready.json()["draining"], health.status_code))
                thread.join(0.5)
            assert answers[0].status_code == 200, answers[0].text
            assert answers[0].json()["outputs"], answers[0].json()
        assert probes and set(probes) == {(503, True, 200)}, probes
        assert stack.proc.poll() is None  # the async result is not fetched yet: it waits

        def finished():
            return requests.get(stack.url + f"/jobs/{job['id']}", timeout=5).json()["state"] == "completed"

        wait_until(finished, 60, "the async job")
        fetched = time.monotonic()
        assert stack.exit_code(timeout=30) == 0
        assert time.monotonic() - fetched < 20  # soon after the last job, not at DRAIN_TIMEOUT_S
        # no drain marker outlives the worker: one in a shared RUN_DIR would stop the next reader
        assert not os.path.exists(RunDir(stack.run_dir).drain_file)
        wait_until(lambda: "drained: nothing left in hand, stopping" in stack.log, 5, "PID 1's words")
    finally:
        stack.stop()


def test_a_job_longer_than_the_drain_answers_shutting_down_and_leaves_comfyui_idle(backend):
    """The job queued behind it in ComfyUI is cut too, taken out of ComfyUI's queue: a sync
    caller is told to send it again, as for any job not started."""
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "DRAIN_TIMEOUT_S": "2"}
    stack = Stack("api", env, backend=backend).ready()
    long_job = slow(60) if backend is STANDIN else {"workflow": slow_workflow(40)}
    try:
        answers, thread = in_thread(lambda: requests.post(stack.url + "/run", json=long_job, timeout=120))
        wait_until(lambda: comfy_running(stack) != [], 20, "the job to run in ComfyUI")
        behind_it = {"workflow": empty_image(5, 5, 0x050505)}
        queued, behind = in_thread(lambda: requests.post(stack.url + "/run", json=behind_it, timeout=120))
        wait_until(lambda: comfy_queue(stack)["queue_pending"] != [], 20, "the next job to queue behind it")
        stack.terminate()
        for cut, waiter in ((answers, thread), (queued, behind)):
            waiter.join(60)
            answer = cut[0]
            assert answer.status_code == 503 and answer.json()["error"].startswith("shutting_down"), (
                answer.text
            )
            assert answer.headers["Retry-After"] == "5"
        assert comfy_queue(stack) == {"queue_running": [], "queue_pending": []}  # ComfyUI stops last
        assert stack.exit_code(timeout=30) == 0
        wait_until(
            lambda: "DRAIN_TIMEOUT_S passed: cutting what is left (2 jobs)" in stack.log, 5, "PID 1's words"
        )
    finally:
        stack.stop()


def test_a_second_signal_does_not_wait_for_the_drain():
    busy = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "DRAIN_TIMEOUT_S": "600"}).ready()
    try:
        in_thread(lambda: requests.post(busy.url + "/run", json=slow(60), timeout=90))
        wait_until(lambda: comfy_running(busy) != [], 20, "the job to run in ComfyUI")
        busy.terminate()
        wait_until(lambda: "draining" in busy.log, 10, "the drain")
        busy.terminate()  # Ctrl-C twice, or an operator who will not wait
        assert busy.exit_code(timeout=30) == 0
        assert "stopping now" in busy.log
    finally:
        busy.stop()


def test_a_drain_the_stop_signal_began_cannot_be_taken_back_even_in_its_grace_period(tmp_path):
    """After the deadline PID 1 writes `stopping`, and the processes cut what they hold; a
    drain file removed meanwhile (DELETE /drain did) is written again with `stopping`, not as
    a fresh drain that would let new work run uncut."""
    layout = RunDir(str(tmp_path))
    os.makedirs(layout.work_dir)
    open(os.path.join(layout.work_dir, f"{os.getpid()}-0-job"), "x").close()  # work in hand
    supervision = Supervision(child=os.getpid(), layout=layout, drain_timeout_s=60)
    drain.begin(layout, time.time() + 60)
    supervision.deadline = time.monotonic()  # the deadline passes
    supervision._drain_round()
    assert drain.state(layout).stopping and supervision.cut_at is not None
    os.remove(layout.drain_file)
    supervision._drain_round()
    assert drain.state(layout) is not None and drain.state(layout).stopping
    assert not supervision.stopped  # still within CUT_GRACE_S


def test_nothing_the_worker_started_outlives_its_pid_1_killed_outright():
    """SIGKILL to PID 1 (the OOM killer, a harness that gave up): supervisord, in a session of
    its own, ran on with gunicorn and ComfyUI. The watchdog sees its PID 1 gone and shuts
    supervisord down."""
    stack = Stack("api", {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0"}).ready()
    sessions = {stack.proc.pid, supervisor_state.rpc(stack.socket).supervisor.getPID()}
    assert len(Stack.sessions(sessions)) >= 4  # supervisord, watchdog, gunicorn (2), ComfyUI
    try:
        os.kill(stack.proc.pid, signal.SIGKILL)
        stack.proc.wait()
        wait_until(lambda: not Stack.sessions(sessions), 60, "every process of the tree to end")
        assert "the worker's PID 1" in stack.log
    finally:
        for pid in Stack.sessions(sessions):  # what a failed test left: its own processes only
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stack.stop()


def test_sighup_reads_the_keys_file_again_says_what_is_in_force_and_cuts_no_job(tmp_path):
    """SIGHUP to PID 1 only, as `docker kill -s HUP` and `kill -HUP 1` send it."""
    first, second = access.new_token(), access.new_token()
    keys = tmp_path / "keys"
    keys.write_text(access.line_for("first", first, "jobs") + "\n")
    env = {"DRY_RUN": "0", "ENCRYPTION_REQUIRED": "0", "API_KEYS_FILE": str(keys)}
    stack = Stack("api", env).start()
    try:
        stack.wait_state("api", "RUNNING")
        stack.wait_http("/readyz")
        programs = stack.api_processes(), supervisor_state.rpc(stack.socket).supervisor.getAllProcessInfo()
        job = in_thread(
            lambda: requests.post(stack.url + "/run", json=slow(2), headers=bearer(first), timeout=60)
        )
        wait_until(lambda: comfy_running(stack) != [], 20, "the job to run in ComfyUI")
        keys.write_text(
            f"{access.line_for('first', first, 'jobs')}\n{access.line_for('second', second, 'jobs')}\n"
        )
        stack.proc.send_signal(signal.SIGHUP)
        said = "SIGHUP: API_KEYS_FILE holds 2 key(s) (first, second); each API process uses them"
        wait_until(lambda: said in stack.log, 20, "PID 1 to say what is in force")
        answers, thread = job
        thread.join(60)
        assert answers[0].status_code == 200 and answers[0].json()["outputs"], answers[0].text
        assert requests.get(stack.url + "/models/ls", headers=bearer(second), timeout=10).status_code == 403
        assert (
            requests.get(stack.url + "/jobs/unknown", headers=bearer(second), timeout=10).status_code == 404
        )

        keys.write_text(f"{access.line_for('first', first, 'jobs')}\nsecond {second} jobs\n")
        stack.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: API_KEYS_FILE line 2:" in stack.log, 20, "PID 1 to name the bad line")
        assert "the keys in force stay" in stack.log and second not in stack.log
        assert (
            requests.get(stack.url + "/jobs/unknown", headers=bearer(second), timeout=10).status_code == 404
        )
        after = stack.api_processes(), supervisor_state.rpc(stack.socket).supervisor.getAllProcessInfo()
        assert [(p["name"], p["pid"]) for p in after[1]] == [(p["name"], p["pid"]) for p in programs[1]]
        assert after[0] == programs[0] and stack.proc.poll() is None  # nothing restarted
    finally:
        stack.stop()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}

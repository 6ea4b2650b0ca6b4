"""The serverless handler: the same pipeline, failures returned (never raised), cancel reaches it."""

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time

from client.envelope_client import open_answer, seal_request
from services.core import config, errors
from services.handler.main import Throttled, make_handler
from services.jobs import envelopes
from services.jobs.webhooks import Webhooks
from tests.pipelines import pipeline
from tests.stack import ROOT
from tests.webhook_receiver import Receiver

PRIVATE, PUBLIC = envelopes.keypair()
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
}


def settings(**env):
    return config.load({"WORKER_PRIVATE_KEY_B64": PRIVATE, "ENCRYPTION_REQUIRED": "0", **env})


class Executor:
    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.cancel = None

    def execute(self, job, progress, cancel):
        self.cancel = cancel
        return self.behaviour(job, progress, cancel)


def run(handler, payload):
    return asyncio.run(handler({"id": "job-1", "input": payload}))


def test_same_result_as_the_pipeline_in_dry_run():
    dry = pipeline(settings(DRY_RUN="1"))
    assert run(make_handler(dry), {"workflow": WORKFLOW}) == dry.run({"workflow": WORKFLOW}).body


def test_encrypted_dry_run_is_opened_checked_and_sealed():
    handler = make_handler(pipeline(settings(DRY_RUN="1", ENCRYPTION_REQUIRED="1")))
    request, ephemeral = seal_request({"nodes": [], "links": []}, PUBLIC)
    answer = run(handler, request)
    assert answer["encrypted"] is True
    assert open_answer(answer, ephemeral, PUBLIC)["error"].startswith("invalid_workflow")


def test_failures_are_returned_as_error_codes():
    handler = make_handler(pipeline(settings(DRY_RUN="1", ENCRYPTION_REQUIRED="1")))
    assert run(handler, {"workflow": WORKFLOW})["error"].startswith("encryption_required")


def test_comfy_restart_asks_the_platform_to_recycle_the_worker():
    def die(job, progress, cancel):
        raise errors.ComfyRestarted("ComfyUI exited under the job")

    answer = run(make_handler(pipeline(settings(), Executor(die))), {"workflow": WORKFLOW})
    assert answer["error"].startswith("comfy_restarted") and answer["refresh_worker"] is True
    pooled = make_handler(pipeline(settings(), Executor(die)), recycle_on_restart=False)
    answer = run(pooled, {"workflow": WORKFLOW})  # the other instances' jobs go on
    assert answer["error"].startswith("comfy_restarted") and "refresh_worker" not in answer


def test_an_unexpected_exception_is_returned_without_a_traceback():
    def bug(job, progress, cancel):
        raise KeyError("secret prompt text")

    answer = run(make_handler(pipeline(settings(), Executor(bug))), {"workflow": WORKFLOW})
    assert answer == {"error": "internal_error: unexpected worker error"}


def test_cancel_sets_the_event_the_executor_watches():
    started, seen = threading.Event(), threading.Event()

    def wait_for_cancel(job, progress, cancel):
        started.set()
        if cancel.wait(5):
            seen.set()
        raise errors.Interrupted("cancelled")

    handler = make_handler(pipeline(settings(), Executor(wait_for_cancel)))

    async def scenario():
        task = asyncio.create_task(handler({"id": "j", "input": {"workflow": WORKFLOW}}))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert seen.wait(5)


def test_progress_is_throttled():
    sent = []
    update = Throttled(sent.append, interval=3600)
    for value in range(10):
        update({"value": value})
    assert sent == [{"value": 0}]
    update.close()


def test_the_last_update_of_a_burst_follows_after_the_interval():
    """A long node after fast ones: its status must name it, not the node before it."""
    sent, arrived = [], threading.Event()

    def send(message):
        sent.append(message)
        if message == {"node": "4"}:
            arrived.set()

    update = Throttled(send, interval=0.2)
    for node in ("1", "2", "3", "4"):
        update({"node": node})
    assert sent == [{"node": "1"}]
    assert arrived.wait(10)
    assert sent == [{"node": "1"}, {"node": "4"}]


def test_nothing_held_is_sent_after_close():
    sent = []
    update = Throttled(sent.append, interval=0.2)
    update({"node": "1"})
    update({"node": "2"})
    update.close()
    time.sleep(0.4)  # twice the interval: the held update would have gone by now
    assert sent == [{"node": "1"}]


def test_one_shot_run_of_the_real_runpod_worker():
    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/tmp",
        "DRY_RUN": "1",
        "ENCRYPTION_REQUIRED": "0",
        "RUNPOD_LOG_LEVEL": "INFO",
    }
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.handler.main",
            "--test_input",
            json.dumps({"input": {"workflow": WORKFLOW}}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "'dry_run': True" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.handler.main",
            "--test_input",
            json.dumps({"input": {"nodes": [], "links": []}}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "invalid_workflow" in bad.stdout + bad.stderr


def test_a_job_runpod_cancelled_still_tells_its_webhook_job_cancelled():
    """The README promises `job.cancelled`: the cancel reaches the handler's task, the job runs
    on in its thread to its end, and its webhook is told of that end."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    receiver = Receiver([secret])
    started = threading.Event()

    def wait_for_cancel(job, progress, cancel):
        started.set()
        cancel.wait(10)
        raise errors.Interrupted("cancelled")

    own = settings(ALLOW_PRIVATE_WEBHOOKS="1", WEBHOOK_RETRY_S="0", WEBHOOK_SECRET=secret)
    handler = make_handler(pipeline(own, Executor(wait_for_cancel)), webhooks=Webhooks(own))

    async def scenario():
        job = {"id": "job-c", "input": {"workflow": WORKFLOW, "webhook": receiver.url("/hook")}}
        task = asyncio.create_task(handler(job))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    deadline = time.monotonic() + 10
    while not receiver.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [json.loads(c.body)["type"] for c in receiver.calls] == ["job.cancelled"]
    assert json.loads(receiver.calls[0].body)["data"]["id"] == "job-c"
    receiver.stop()

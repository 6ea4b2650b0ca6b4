import shutil
import threading

import pytest

from client.envelope_client import open_answer, seal_request
from services.core import config, errors
from services.core.in_hand import InHand
from services.jobs import envelopes
from services.jobs.access import EVERY_SCOPE, Key
from services.jobs.async_jobs import AsyncJobs
from services.jobs.quotas import Quotas
from tests.pipelines import pipeline

WORKFLOW = {"1": {"class_type": "SaveImage", "inputs": {}}}


class Executor:
    """ComfyUI's: the job starts when its prompt leaves the queue (here, at once), then runs."""

    def __init__(self, behaviour, queued=None):
        self.behaviour = behaviour
        self.queued = queued  # set: the prompt waits in ComfyUI's queue until it is set
        self.reached = threading.Event()  # the job reached ComfyUI

    def execute(self, job, progress, cancel):
        self.reached.set()
        if self.queued is not None:
            self.queued.wait(5)
        if job.on_start is not None:
            job.on_start()
        return self.behaviour(progress, cancel)


def jobs(behaviour):
    settings = config.load({"ENCRYPTION_REQUIRED": "0"})
    return AsyncJobs(pipeline(settings, Executor(behaviour)))


def finished(job):
    for _ in range(200):
        if job.finished:
            return True
        threading.Event().wait(0.01)
    return False


def test_a_bug_in_the_job_ends_it_as_failed_not_stuck_running():
    def bug(progress, cancel):
        raise KeyError("boom")

    job = jobs(bug).start({"workflow": WORKFLOW})
    assert finished(job) and job.state == "failed"
    assert job.view()["result"] == {"error": "internal_error: unexpected worker error"}


def test_progress_result_and_cancel():
    release = threading.Event()

    def slow(progress, cancel):
        progress({"node": "1", "value": 1, "max": 2})
        if cancel.wait(5):
            raise errors.Interrupted("the job was cancelled")
        return {"status": "ok"}

    store = jobs(slow)
    job = store.start({"workflow": WORKFLOW})
    for _ in range(100):
        if job.progress:
            break
        release.wait(0.01)
    assert job.view()["progress"] == {"node": "1", "value": 1, "max": 2} and job.state == "running"
    store.cancel(job.id)
    assert finished(job) and job.state == "cancelled" and job.http_status == 409
    assert store.get("nope") is None and store.cancel("nope") is None


def test_a_job_is_queued_until_its_prompt_leaves_comfyuis_queue_as_in_a_fleet():
    """One meaning of `running` for every store: the prompt left ComfyUI's queue."""
    settings = config.load({"ENCRYPTION_REQUIRED": "0"})
    queued = threading.Event()
    executor = Executor(lambda progress, cancel: {"status": "ok"}, queued)
    store = AsyncJobs(pipeline(settings, executor))
    job = store.start({"workflow": WORKFLOW})
    assert executor.reached.wait(5)  # its prompt is in ComfyUI's queue, behind another
    assert job.state == "queued" and not job.finished
    queued.set()
    assert finished(job) and job.state == "completed"


def test_a_job_keeps_its_slot_until_it_ends_and_gives_it_back_once():
    settings = config.load({"ENCRYPTION_REQUIRED": "0"})
    quotas = Quotas(settings)
    key = Key("team", EVERY_SCOPE, max_jobs=1)
    release = threading.Event()
    store = AsyncJobs(
        pipeline(settings, Executor(lambda progress, cancel: release.wait(5) and {"status": "ok"}))
    )
    with quotas.take_job(key) as slot:  # as a route holds it (services.api.access_control)
        job = store.start({"workflow": WORKFLOW}, owner="team", slot=slot)
    assert job.id == slot.id
    with pytest.raises(errors.QuotaExceeded):  # the request ended; its job holds the slot
        quotas.take_job(key)
    release.set()
    assert finished(job)
    quotas.take_job(key).give_back()  # free again, once
    job.slot.give_back()
    assert quotas.take_job(key).id


def test_an_encrypted_job_with_a_malformed_webhook_ends_failed_sealed_and_lets_go_of_its_piece(tmp_path):
    """Its webhook is read only when the box opens: a URL urllib cannot parse ended the job
    nowhere (left `running`, its drain piece held for ever, the in-flight gauge one too high)."""
    private, public = envelopes.keypair()
    settings = config.load({"WORKER_PRIVATE_KEY_B64": private, "RUN_DIR": str(tmp_path), "DRY_RUN": "1"})
    observer = Observer()
    in_hand = InHand(settings.run_layout)
    store = AsyncJobs(pipeline(settings, in_hand=in_hand, observer=observer))
    body, ephemeral = seal_request({"workflow": WORKFLOW, "webhook": "http://[::1"}, public)
    job = store.start(body)
    assert finished(job) and job.state == "failed" and job.http_status == 400
    assert "error" not in job.result  # sealed: the job's own error
    assert open_answer(job.result, ephemeral, public)["error"].startswith("invalid_webhook")
    assert observer.running == 0
    store.get(job.id)  # its result fetched once: nothing of it is in hand
    assert in_hand.count() == 0


class Observer:
    def __init__(self):
        self.running = 0

    def job_started(self):
        self.running += 1

    def job_ended(self, reply, seconds, key):
        self.running -= 1

    def envelope_opened(self, kid):
        pass


def test_a_pipeline_whose_edge_breaks_still_answers_and_ends_the_job(tmp_path):
    """A drain piece that cannot be written (RUN_DIR gone): a coded answer, never a raise."""
    settings = config.load({"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path), "DRY_RUN": "1"})
    observer = Observer()
    in_hand = InHand(settings.run_layout)
    shutil.rmtree(settings.run_layout.work_dir)
    reply = pipeline(settings, in_hand=in_hand, observer=observer).run({"workflow": WORKFLOW})
    assert (reply.status, reply.body) == (500, {"error": "internal_error: unexpected worker error"})
    assert observer.running == 0

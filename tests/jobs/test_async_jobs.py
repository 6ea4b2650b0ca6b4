import threading

from services.core import config, errors
from services.jobs.async_jobs import AsyncJobs
from tests.pipelines import pipeline

WORKFLOW = {"1": {"class_type": "SaveImage", "inputs": {}}}


class Executor:
    def __init__(self, behaviour):
        self.behaviour = behaviour

    def execute(self, job, progress, cancel):
        return self.behaviour(progress, cancel)


def jobs(behaviour):
    return AsyncJobs(pipeline(config.load({"ENCRYPTION_REQUIRED": "0"}), Executor(behaviour)))


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

"""Taking a job's prompt out of ComfyUI's queue: one that starts while it is stopped is
interrupted, and counted started."""

from services.comfy.prompt_queue import PromptJob, PromptQueue
from services.core.job_spec import JobRequest


class StartsDuringTheStop:
    """ComfyUI whose prompt is pending when the stop looks, and starts before the delete
    arrives (the delete then finds nothing to delete)."""

    def __init__(self, prompt_id):
        self.prompt_id = prompt_id
        self.looks = 0
        self.deleted = self.interrupted = False

    def queue(self):
        self.looks += 1
        item = [[0, self.prompt_id, {}, {}, []]]
        return (
            {"queue_pending": item, "queue_running": []}
            if self.looks == 1
            else {
                "queue_pending": [],
                "queue_running": item,
            }
        )

    def delete_from_queue(self, prompt_id):
        self.deleted = True

    def interrupt(self, prompt_id):
        self.interrupted = True

    def history(self, prompt_id):
        return {"status": {}} if self.interrupted else None


def test_a_prompt_that_starts_while_it_is_stopped_is_interrupted_and_counted_started():
    started = []
    job = PromptJob(JobRequest({}, (), False, 10, on_start=lambda: started.append(True)))
    client = StartsDuringTheStop(job.prompt_id)
    PromptQueue(client).stop(job)
    assert client.deleted and client.interrupted  # not left running with its place counted free
    assert job.started and started == [True]  # a fleet job that ran is not handed to another pod

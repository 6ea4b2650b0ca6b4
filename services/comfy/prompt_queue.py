"""One job's prompt in ComfyUI's queue: what the worker knows of it, where ComfyUI has it, and
taking it out (deleted while it waits, interrupted while it runs).

ComfyUI moves a prompt from its queue to running, and from running to its history, under one
lock: after a delete the prompt is in one of them or gone, which is how a prompt that started
in the meantime is told from one that was withdrawn.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from services.comfy.client import ComfyClient
from services.core import errors
from services.core.job_spec import JobRequest

log = logging.getLogger("worker.comfy")

END_GRACE_S = 3.0  # after an interrupt, how long to wait for the prompt's end (then `cleanup` watches)


@dataclass(eq=False)
class PromptJob:
    request: JobRequest
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    tag: str = field(default_factory=lambda: f"job-{uuid.uuid4().hex[:16]}")  # its input subfolder
    client_id: str = ""
    files: list[dict] = field(default_factory=list)  # every file an `executed` message named
    submitted: bool = False
    number: int | None = None  # its place in ComfyUI's queue, once ComfyUI accepted it
    comfy: str | None = None  # the ComfyUI process it was given to (the relay's pid)
    started: bool = False  # ComfyUI told of the prompt running (or ending): it left the queue
    ended: bool = False  # ComfyUI told of its end
    behind: bool = False  # when ComfyUI was lost: a prompt of ours ahead of it had not ended
    unanswered: bool = False  # ComfyUI stopped answering: leave its history to a later sweep

    def mark_started(self) -> None:
        """Its prompt left ComfyUI's queue: the job's `on_start` is told, once."""
        if not self.started:
            self.started = True
            if self.request.on_start is not None:
                self.request.on_start()


class PromptQueue:
    def __init__(self, client: ComfyClient) -> None:
        self.client = client

    def known(self, job: PromptJob) -> bool:
        """Whether ComfyUI still has the prompt: waiting, running (then it started) or ended."""
        queue = self.client.queue()
        if _listed(queue, "queue_running", job):
            job.mark_started()
            return True
        if _listed(queue, "queue_pending", job):
            return True
        return self.client.history(job.prompt_id) is not None  # finished between the two calls

    def withdraw(self, job: PromptJob) -> bool:
        """Take a prompt that waits in ComfyUI's queue out of it. False when it started in the
        meantime."""
        try:
            self.client.delete_from_queue(job.prompt_id)
            if self.known(job):
                job.mark_started()  # not pending after the delete: running or ended; keep it
                return False
        except errors.WorkerError:
            return False  # the job's own wait finds out what became of ComfyUI
        return True

    def stop(self, job: PromptJob) -> None:
        """Take the prompt out of ComfyUI: delete it when pending, interrupt it when running,
        and wait briefly for its end so that its history entry can be deleted too."""
        try:
            queue = self.client.queue()
            if _listed(queue, "queue_pending", job):
                self.client.delete_from_queue(job.prompt_id)
                queue = self.client.queue()  # it may have started before the delete (as in withdraw)
            if _listed(queue, "queue_running", job):
                job.mark_started()  # it left the queue: a fleet job is started, not handed on
                self.client.interrupt(job.prompt_id)
                limit = time.monotonic() + END_GRACE_S
                while time.monotonic() < limit and self.client.history(job.prompt_id) is None:
                    time.sleep(0.1)
        except errors.WorkerError:
            log.info("ComfyUI did not answer while stopping a job")
            job.unanswered = True


def _listed(queue: dict, part: str, job: PromptJob) -> bool:
    """Whether the job's prompt is in that part of ComfyUI's /queue answer."""
    return any(len(item) > 1 and item[1] == job.prompt_id for item in queue.get(part, []))

"""WARMUP_WORKFLOW: one workflow run after each ComfyUI (re)start, before any job.

A cold ComfyUI loads a checkpoint on the first prompt that needs it, so the first user job pays
for it; a warm-up (for example a workflow that loads the checkpoint) pays instead. It runs in
the worker process through the executor (time limit, clean-up, error codes as any job), as soon
as ComfyUI answers after a start the launcher counted. Until it ends, /readyz says 503 and jobs
wait for it; a warm-up that fails is logged with its code and shown in /healthz, and jobs then
run anyway (the worker is no worse than without one).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from services.comfy import starts
from services.core import background, errors, job_spec
from services.core.config import Settings

if TYPE_CHECKING:
    from services.comfy.executor import ComfyExecutor

log = logging.getLogger("worker.warmup")
POLL_S = 0.5


def load(path: str) -> dict:
    """The workflow, checked like a job's; `errors.InvalidWorkflow` says what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            workflow = json.load(handle)
    except OSError as exc:
        raise errors.InvalidWorkflow(f"cannot read it ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.InvalidWorkflow("it is not a JSON file") from None
    return job_spec.validate_workflow(workflow)


def start_warmup(settings: Settings, executor: ComfyExecutor) -> Warmup | None:
    """The warm-up watcher, gating the executor's jobs; None without WARMUP_WORKFLOW or under
    DRY_RUN (no ComfyUI). The entrypoint has checked the workflow before anything started."""
    if settings.warmup_workflow is None or settings.dry_run:
        return None
    warmup = Warmup(settings, executor, load(settings.warmup_workflow))
    executor.gate = warmup.wait
    return warmup.start()


class Warmup:
    def __init__(self, settings: Settings, executor: ComfyExecutor, workflow: dict) -> None:
        self.settings = settings
        self.executor = executor
        self.workflow = workflow
        self.state = "pending"  # pending -> running -> done | failed, again after each restart
        self.error: str | None = None
        self.runs = 0
        self._finished_for = -1  # the ComfyUI start the last warm-up ran on
        self._changed = threading.Condition()

    def start(self) -> Warmup:
        background.start("warmup", self._watch)
        return self

    def ready(self) -> bool:
        """The warm-up of ComfyUI's current start has ended (done or failed)."""
        return self._finished_for == starts.read(self.settings.comfy_starts_file)

    def wait(self, deadline: float) -> None:
        """Hold a job until the warm-up of this start ended, within the job's time."""
        with self._changed:
            while not self.ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.ComfyInitFailed(
                        "the warm-up (WARMUP_WORKFLOW) did not end within the job's time"
                    )
                self._changed.wait(min(left, POLL_S))

    def view(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "runs": self.runs}

    def _watch(self) -> None:
        while True:
            current = starts.read(self.settings.comfy_starts_file)
            if current == self._finished_for:
                time.sleep(POLL_S)
            elif self.executor.until_answers(time.monotonic() + POLL_S):  # at once when it boots
                self._run(current)

    def _run(self, start: int) -> None:
        self.state, self.error = "running", None
        request = job_spec.JobRequest(
            workflow=self.workflow, images=(), no_history=True, timeout_s=self.settings.job_timeout_s
        )
        began = time.monotonic()
        try:
            self.executor.execute(request, None, None, gated=False)
            self.state = "done"
            log.info("warm-up done in %.1f s", time.monotonic() - began)
        except errors.WorkerError as exc:
            self.state, self.error = "failed", exc.code  # /healthz is open: the code, not the detail
            log.error("warm-up failed: %s", exc.code)
        except Exception as exc:  # a bug must not kill the watcher: later restarts still warm up
            self.state, self.error = "failed", "internal_error"
            background.log_unexpected(log, "warm-up failed", exc)
        with self._changed:
            self.runs += 1
            self._finished_for = start
            self._changed.notify_all()

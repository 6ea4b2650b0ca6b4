"""What runs after each ComfyUI (re)start, before any job: the pre-flight, then WARMUP_WORKFLOW.

The pre-flight (services.comfy.preflight, PREFLIGHT=1) proves the device computes. One that
fails names the device and the error in one line, and the start takes no job: `failed` is
told (the pool restarts the instance, or takes it out for good), and its jobs go elsewhere or
wait for the next start.

A cold ComfyUI loads a checkpoint on the first prompt that needs it, so the first user job pays
for it; a warm-up (for example a workflow that loads the checkpoint) pays instead. Both run in
the worker process through the executor (time limit, clean-up, error codes as any job), as soon
as ComfyUI answers after a start the launcher counted. Until they end, /readyz says 503 and jobs
wait for them; a warm-up that fails is logged with its code and shown in /healthz, and jobs then
run anyway (the worker is no worse than without one).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.comfy import devices, preflight, starts
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
    """The watcher of each start (pre-flight and warm-up), gating the executor's jobs; None
    with neither (PREFLIGHT=0, no WARMUP_WORKFLOW) or under DRY_RUN (no ComfyUI). The entrypoint
    has checked the workflow before anything started."""
    if settings.dry_run or not (settings.preflight or settings.warmup_workflow):
        return None
    workflow = load(settings.warmup_workflow) if settings.warmup_workflow else None
    warmup = Warmup(settings, executor, workflow)
    executor.gate = warmup.wait
    return warmup.start()


class Warmup:
    def __init__(self, settings: Settings, executor: ComfyExecutor, workflow: dict | None) -> None:
        self.settings = settings
        self.executor = executor
        self.workflow = workflow
        self.state = "pending"  # pending -> running -> done | failed, again after each restart
        self.error: str | None = None
        self.runs = 0
        self.preflight: str | None = "pending" if settings.preflight else None  # -> passed | failed
        self.failed: Callable[[str], None] = lambda _cause: None  # the pool's: a pre-flight failed
        self.device = devices.of(settings).describe(settings.comfy_instance)  # what its log lines name
        self._finished_for = -1  # the ComfyUI start the last warm-up ran on
        self._failed_for = -1  # ... and the start whose pre-flight failed
        self._changed = threading.Condition()

    def start(self) -> Warmup:
        background.start("warmup", self._watch)
        return self

    def ready(self) -> bool:
        """The warm-up of ComfyUI's current start has ended (done or failed), after a
        pre-flight that did not fail."""
        current = starts.read(self.settings.comfy_starts_file)
        return self._finished_for == current and self._failed_for != current

    def wait(self, deadline: float) -> None:
        """Hold a job until the warm-up of this start ended, within the job's time (after a
        failed pre-flight it returns at once: the executor sends the job elsewhere)."""
        with self._changed:
            while not self._ended():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.ComfyInitFailed(
                        "the warm-up (WARMUP_WORKFLOW) did not end within the job's time"
                    )
                self._changed.wait(min(left, POLL_S))

    def _ended(self) -> bool:
        return self._finished_for == starts.read(self.settings.comfy_starts_file)

    def view(self) -> dict[str, Any] | None:
        """The warm-up workflow's (None without one)."""
        if self.workflow is None:
            return None
        return {"state": self.state, "error": self.error, "runs": self.runs}

    def _watch(self) -> None:
        while True:
            current = starts.read(self.settings.comfy_starts_file)
            if current == self._finished_for:
                time.sleep(POLL_S)
            elif self.executor.until_answers(time.monotonic() + POLL_S):  # at once when it boots
                self._run(current)

    def _run(self, start: int) -> None:
        passed = not self.settings.preflight or self._preflight(start)
        if passed and self.workflow is not None:
            self._warm_up(self.workflow)
        with self._changed:
            if passed and self.workflow is not None:
                self.runs += 1
            self._finished_for = start
            if not passed:
                self._failed_for = start
            self._changed.notify_all()

    def _preflight(self, start: int) -> bool:
        """Whether the device computed (a ComfyUI without the node, its custom nodes turned off,
        is let through with a line saying so; one that died under it is simply started again)."""
        self.preflight = "running"
        device, instance = self.device, self.settings.comfy_instance
        try:
            self._execute(preflight.workflow(start))
        except errors.WorkflowValidationFailed:
            self.preflight = "skipped"
            log.warning("instance %d: no pre-flight, ComfyUI has no %s node", instance, preflight.CLASS)
            return True
        except (errors.ComfyRestarted, errors.ComfyInitFailed) as exc:
            self.preflight = "pending"
            log.warning("instance %d: ComfyUI went away during its pre-flight: %s", instance, exc.code)
            return True
        except errors.WorkerError as exc:
            self.preflight = "failed"
            cause = exc.cause or exc.message
            log.error("instance %d: pre-flight failed on %s: %s", instance, device, cause)
            self.failed(cause)
            return False
        except Exception as exc:  # a bug of ours is no broken GPU: the start takes jobs
            self.preflight = "pending"
            background.log_unexpected(log, "pre-flight", exc)
            return True
        self.preflight = "passed"
        log.info("instance %d: pre-flight passed on %s", instance, device)
        return True

    def _warm_up(self, workflow: dict) -> None:
        self.state, self.error = "running", None
        began = time.monotonic()
        try:
            self._execute(workflow)
            self.state = "done"
            log.info("warm-up done in %.1f s", time.monotonic() - began)
        except errors.WorkerError as exc:
            self.state, self.error = "failed", exc.code  # /healthz is open: the code, not the detail
            log.error("warm-up failed: %s", exc.code)
        except Exception as exc:  # a bug must not kill the watcher: later restarts still warm up
            self.state, self.error = "failed", "internal_error"
            background.log_unexpected(log, "warm-up failed", exc)

    def _execute(self, workflow: dict) -> None:
        request = job_spec.JobRequest(
            workflow=workflow, images=(), no_history=True, timeout_s=self.settings.job_timeout_s
        )
        self.executor.execute(request, None, None, gated=False)

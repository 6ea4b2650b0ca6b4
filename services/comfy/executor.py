"""Run one checked job in ComfyUI and leave nothing of it behind.

take the open websocket (or open one) -> write inputs into ComfyUI's input folder (prompt_inputs)
-> POST /prompt -> follow messages until `executing` with node null (or poll the history when the
socket is gone) -> read the history and the outputs (outputs). Whatever the
ending, `cleanup` then takes the history entry, inputs and outputs, after the answer.

The websocket of a job that ended normally stays open for the next one: its messages carry
prompt ids, so what arrives late for an earlier prompt is ignored. Where a prompt is in
ComfyUI's queue, and taking it out, is `prompt_queue`'s; what a failed prompt says of the GPU
is `device_faults`' (a job after the first fault in a ComfyUI process runs again elsewhere).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable

from services.comfy import health
from services.comfy.cleanup import Cleanup, files_of
from services.comfy.client import (
    ComfyClient,
    ComfyUnreachable,
    Socket,
    SocketLost,
    Sockets,
    describe_validation_error,
)
from services.comfy.device_faults import GpuRecord
from services.comfy.outputs import Outcome, Outputs, outcome_of
from services.comfy.prompt_inputs import Prompts
from services.comfy.prompt_queue import PromptJob, PromptQueue
from services.core import errors, tracing
from services.core.config import Settings
from services.core.job_spec import Cancel, JobRequest, Progress

log = logging.getLogger("worker.comfy")

RECV_TICK_S = 0.5  # how often a silent wait checks cancel and the deadline
LOST_AFTER_S = 5.0  # ComfyUI unreachable this long under a job: it died
READY_TRUST_S = 2.0  # after a job that ended normally, no readiness probe for this long
BOOT_POLL_S = 0.01  # while ComfyUI boots: how often the relay's ready file is looked at
PROBE_EVERY_S = 0.5  # ... and how often ComfyUI is asked over HTTP without it
# messages no job reads, recognised before parsing: ComfyUI writes json.dumps({"type", "data"}),
# and progress_state lists every node of the prompt each time one changes
UNREAD = ('{"type": "status"', '{"type": "progress_state"')


class NotStarted(Exception):
    """The job's prompt never ran in this ComfyUI, or ran in one whose GPU had failed before (so
    nothing it did counts), and is not in it now: it may run elsewhere. `error`: the ComfyUI
    died, restarted or failed under it; None: it was taken back to move."""

    code = "not_started"  # what its span says

    def __init__(self, error: errors.WorkerError | None) -> None:
        super().__init__(str(error) if error else "moved")
        self.error = error


class ComfyExecutor:
    def __init__(self, settings: Settings, client: ComfyClient | None = None) -> None:
        self.settings = settings
        self.client = client or ComfyClient(settings.comfy_url)
        self.cleanup = Cleanup(settings, self.client)
        self.prompts = Prompts(settings, self.client)
        self.outputs = Outputs(settings, self.client)
        self.queue = PromptQueue(self.client)
        self._last_success = -READY_TRUST_S  # when ComfyUI last ran a prompt of ours to its end
        self.sockets = Sockets(self.client, RECV_TICK_S)
        self._accepted: list[PromptJob] = []  # jobs whose prompt ComfyUI accepted, until they answer
        self._lock = threading.Lock()
        self.gate: Callable[[float], None] | None = None  # set by the warm-up (services.comfy.warmup)
        self.gpu = GpuRecord(settings)  # what its failed prompts say of its GPU

    # --- the job -----------------------------------------------------------------------------
    def execute(
        self,
        request: JobRequest,
        progress: Progress | None,
        cancel: Cancel | None,
        gated: bool = True,
        deadline: float | None = None,
        move: Callable[[], bool] | None = None,
    ) -> dict:
        """`gated`: wait for the gate (the warm-up of ComfyUI's current start) first.
        `deadline`: when the job's time began before (it waited for a free instance).
        `move`: asked while the prompt waits in ComfyUI's queue; True takes it out to run
        elsewhere. Given, a job whose ComfyUI died before its prompt started raises NotStarted
        rather than comfy_restarted (the pool runs it again)."""
        job = PromptJob(request)
        deadline = time.monotonic() + request.timeout_s if deadline is None else deadline
        entry: dict | None = None
        self.cleanup.begin()
        try:
            self._wait_ready(deadline, move)
            if gated and self.gate is not None:
                self.gate(deadline)
                if move is not None and self.gpu.faulted():  # its pre-flight failed
                    raise NotStarted(None)  # elsewhere, or here after the restart
            job.client_id, ws = self.sockets.take()
            keep = False
            try:
                with tracing.stage("upload", **{"job.images": len(request.images)}):
                    prompt = self.prompts.prompt(request, job.tag, job.prompt_id)
                job.submitted = True  # the prompt id is ours: whatever happens next, it is swept
                job.comfy = health.booted_pid(self.settings) or ""
                with tracing.stage("comfyui.execute"):
                    accepted = self._submit(job, prompt)
                    with self._lock:
                        job.number = accepted.get("number")
                        self._accepted.append(job)
                    if accepted.get("node_errors"):  # ComfyUI queued the valid outputs only
                        self.queue.stop(job)
                        with contextlib.suppress(errors.WorkerError):  # the validation error is the answer
                            entry = self.client.history(job.prompt_id)  # what that part wrote, to clean up
                        raise errors.WorkflowValidationFailed(
                            describe_validation_error(accepted), accepted.get("node_errors")
                        )
                    outcome = self._follow(job, ws, deadline, progress, cancel, move)
                keep = outcome.on_socket
                job.mark_started()  # it ran, even when no message said it started
            finally:
                self.sockets.give_back(job.client_id, ws, keep)
            with tracing.stage("outputs") as read:
                entry = self.outputs.entry(job.prompt_id)
                self._ended(outcome, entry)
                if request.no_history:
                    return {"status": "ok", "prompt_id": job.prompt_id}
                outputs = self.outputs.read(entry)
                read.set(**{"job.outputs": len(outputs)})
            return {
                "status": "ok",
                "prompt_id": job.prompt_id,
                "outputs": outputs,
                "history": {"status": entry.get("status"), "outputs": entry.get("outputs")},
            }
        except (errors.GpuFault, errors.ComfyRestarted) as error:
            raise self._after(error, job, move) from None
        finally:
            with self._lock:
                if job in self._accepted:
                    self._accepted.remove(job)
            prompt_id = job.prompt_id if job.submitted else None
            self.cleanup.end(job.tag, prompt_id, entry, job.files, sweep=not job.unanswered)

    def _after(self, error: errors.WorkerError, job: PromptJob, move: Callable[[], bool] | None) -> Exception:
        """What a job raises whose failure says something of its ComfyUI: NotStarted when it
        may run again (given `move`: the pool's), else the error."""
        if isinstance(error, errors.GpuFault):
            first = self.gpu.first_fault(job.comfy or "", functools.partial(self._earlier, job))
            return error if first or move is None else NotStarted(error)  # not this job's doing
        self._last_success = -READY_TRUST_S  # the next job asks whether ComfyUI is back first
        if move is not None and self.gpu.restarting():  # restarted for its failed GPU
            return NotStarted(error)
        if move is None or job.started or (job.number is not None and not job.behind):
            return error  # it ran, or may have: the first prompt in the queue starts at once
        return NotStarted(error)

    def _earlier(self, job: PromptJob) -> bool:
        """Whether a prompt of ours that ComfyUI ran before the job's is still to be answered."""
        with self._lock:
            return any(
                o is not job and o.number is not None and o.number < (job.number or 0) for o in self._accepted
            )

    def _ended(self, outcome: Outcome, entry: dict) -> None:
        """ComfyUI ran the prompt to its end, so it answers: its failure is raised; a success
        clears what the GPU's failures were counting."""
        self._last_success = time.monotonic()
        self.outputs.raise_for(outcome, entry)
        self.gpu.went_well()

    def _submit(self, job: PromptJob, prompt: dict) -> dict:
        """POST the prompt. A ComfyUI that does not answer it in time but answers /system_stats
        is busy, not dead: `comfy_busy`, and whatever it queues late is taken out again."""
        try:
            return self.client.submit(
                prompt,
                job.client_id,
                job.prompt_id,
                self.settings.comfy_submit_timeout_s,
                extra_data=_extra_data(job.request),
            )
        except ComfyUnreachable:
            if not self.client.ready(timeout=2.0):
                raise
            self.queue.stop(job)
            raise errors.ComfyBusy(
                f"ComfyUI answers but took no prompt within {self.settings.comfy_submit_timeout_s:g} s "
                "(COMFY_SUBMIT_TIMEOUT_S); try again"
            ) from None

    def _wait_ready(self, deadline: float, move: Callable[[], bool] | None) -> None:
        """A cold start may still be booting ComfyUI: wait for it, within the job's time. Right
        after a job that went through, skip the probe (a ComfyUI that died since is noticed by
        the job's own calls). One whose GPU failed is waited for until it restarted; taken out
        for good meanwhile, the job goes back to the pool (`move`: the pool's)."""
        if not self.gpu.restarting() and time.monotonic() - self._last_success < READY_TRUST_S:
            return
        limit = min(deadline, time.monotonic() + self.settings.comfy_ready_timeout_s)
        while self.gpu.faulted():  # it answers, but its GPU failed: wait for its restart
            if health.broken(self.settings) is not None:
                if move is None:
                    raise errors.GpuUnusable("this ComfyUI is out for good: its GPU kept failing")
                raise NotStarted(None)
            if time.monotonic() >= limit:
                raise errors.ComfyInitFailed("ComfyUI did not restart in time after its GPU failed")
            time.sleep(BOOT_POLL_S)
        if not self.until_answers(limit):
            raise errors.ComfyInitFailed("ComfyUI did not answer on its port in time")

    def until_answers(self, limit: float) -> bool:
        """Whether ComfyUI answers before `limit` (monotonic). The relay writes its ready file
        the moment ComfyUI opens its port: that file is looked at every BOOT_POLL_S (a stat, no
        load on a booting ComfyUI) and ComfyUI asked at once when it appears or changes; over
        HTTP otherwise only every PROBE_EVERY_S."""
        seen, asked = health.booted_pid(self.settings), -PROBE_EVERY_S
        while True:
            now, booted = time.monotonic(), health.booted_pid(self.settings)
            if (booted and booted != seen) or now - asked >= PROBE_EVERY_S:
                seen, asked = booted, now
                if self.client.ready(timeout=2.0):
                    return True
            if time.monotonic() >= limit:
                return False
            time.sleep(BOOT_POLL_S)

    # --- waiting for the end ------------------------------------------------------------------
    def _follow(
        self,
        job: PromptJob,
        ws: Socket,
        deadline: float,
        progress: Progress | None,
        cancel: Cancel | None,
        move: Callable[[], bool] | None,
    ) -> Outcome:
        outcome, current = Outcome(), ws
        try:
            while not outcome.done:
                self._check_limits(job, deadline, cancel)
                if move is not None and self._waits_behind(job) and move() and self.queue.withdraw(job):
                    raise NotStarted(None)
                try:
                    raw = current.receive()
                except SocketLost:
                    job.behind = job.behind or self._behind(job)
                    current = self._reconnect(job)
                    if current is None:
                        return self._poll(job, deadline, cancel)
                    continue
                if raw and not raw.startswith(UNREAD):
                    self._on_message(job, raw, outcome, progress)
            outcome.on_socket = current is ws
            return outcome
        finally:
            if current is not None and current is not ws:
                current.close()

    def _on_message(self, job: PromptJob, raw: str, outcome: Outcome, progress: Progress | None) -> None:
        try:
            message = json.loads(raw)
            kind, data = message["type"], message["data"]
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(data, dict) or data.get("prompt_id") != job.prompt_id:
            return
        job.mark_started()  # only a prompt that left the queue is told of
        if kind == "executed":
            job.files.extend(files_of({"outputs": {"node": data.get("output")}}))
        elif kind == "executing":
            if data.get("node") is None:
                outcome.done = job.ended = True
            elif progress:
                progress({"node": data["node"]})
        elif kind == "progress" and progress:
            progress({"node": data.get("node"), "value": data.get("value"), "max": data.get("max")})
        elif kind == "execution_error":
            outcome.error = data
        elif kind == "execution_interrupted":
            outcome.interrupted = True

    def _behind(self, job: PromptJob) -> bool:
        """Whether an accepted prompt of ours that had not ended is ahead of `job`'s in ComfyUI's
        queue (ComfyUI runs one prompt at a time, the lowest number first): then `job`'s had
        not started. Asked the moment the job's socket breaks, before the other job answers."""
        with self._lock:
            return job.number is not None and any(
                other.number is not None and other.number < job.number and not other.ended
                for other in self._accepted
            )

    def _waits_behind(self, job: PromptJob) -> bool:
        """Whether the job's prompt waits behind another of ours that runs: only then may it
        move. A lone prompt ComfyUI has not picked up yet (its clean-up after the last prompt
        takes a while) starts next where it is."""
        return not job.started and self._behind(job)

    def _reconnect(self, job: PromptJob) -> Socket | None:
        """A dropped socket: reconnect with the same client id, or give up and poll."""
        for _ in range(3):
            try:
                ws = self.client.open_socket(job.client_id, RECV_TICK_S)
            except ComfyUnreachable:
                time.sleep(0.5)
                continue
            log.info("websocket reconnected")
            if self.client.history(job.prompt_id) is not None:  # it ended while we were away
                ws.close()
                return None
            if not self.queue.known(job):
                ws.close()
                raise errors.ComfyRestarted("ComfyUI restarted and lost the job")
            return ws
        log.info("websocket lost; polling the history")
        return None

    def _poll(self, job: PromptJob, deadline: float, cancel: Cancel | None) -> Outcome:
        unreachable_since: float | None = None
        while True:
            self._check_limits(job, deadline, cancel)
            try:
                entry = self.client.history(job.prompt_id)
                if entry is not None:
                    return outcome_of(entry)
                if not self.queue.known(job):
                    raise errors.ComfyRestarted("ComfyUI restarted and lost the job")
                unreachable_since = None
            except ComfyUnreachable:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > LOST_AFTER_S:
                    raise errors.ComfyRestarted("ComfyUI stopped answering under the job") from None
            time.sleep(0.25)

    def _check_limits(self, job: PromptJob, deadline: float, cancel: Cancel | None) -> None:
        if cancel is not None and cancel.is_set():
            self.queue.stop(job)
            raise cancel.error
        if time.monotonic() >= deadline:
            self.queue.stop(job)
            raise errors.JobTimeout(f"the job did not finish within {job.request.timeout_s:g} s")


def _extra_data(request: JobRequest) -> dict | None:
    """What ComfyUI's API nodes read from the prompt's extra_data (ComfyUI drops it from the
    history it keeps, execution.py SENSITIVE_EXTRA_DATA_KEYS)."""
    if request.comfy_org_api_key is None:
        return None
    return {"api_key_comfy_org": request.comfy_org_api_key}

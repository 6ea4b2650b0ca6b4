"""How a job ended, named once: the state of an async job (both job stores), RunPod's status
(the RunPod routes and the local queue) and the outcome label of the metrics.

A cancel is `cancelled` whether it was seen as the flag a client set or as the `interrupted`
answer the pipeline gave; a job that answered 200 is `completed`; anything else `failed`, a job
the drain's deadline cut (`shutting_down`) too.
"""

from __future__ import annotations

from services.core import errors

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
STATES = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)
ENDED = (COMPLETED, FAILED, CANCELLED)
RUNPOD_STATUS = {
    QUEUED: "IN_QUEUE",
    RUNNING: "IN_PROGRESS",
    COMPLETED: "COMPLETED",
    FAILED: "FAILED",
    CANCELLED: "CANCELLED",
}
RUNPOD_FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def of_reply(status: int, code: str | None, cancel_asked: bool = False) -> str:
    """The end state of a job the pipeline answered with `status` and error `code`."""
    if code == errors.ShuttingDown.code:  # the drain's deadline stopped it, not its caller
        return FAILED
    if cancel_asked or code == errors.Interrupted.code:
        return CANCELLED
    return COMPLETED if status == 200 else FAILED


def of_runpod(status: str) -> str:
    """The end state of a job RunPod's protocol reports with `status` (TIMED_OUT: failed)."""
    return {"COMPLETED": COMPLETED, "CANCELLED": CANCELLED}.get(status, FAILED)


def as_runpod(body: dict) -> dict:
    """A handler's answer as RunPod reports it: `error` taken out and the job FAILED (what is
    left stays as its output), anything else is the output. A sealed answer has no `error`."""
    if "error" not in body:
        return {"status": "COMPLETED", "output": body}
    rest = {k: v for k, v in body.items() if k != "error"}
    return {"status": "FAILED", "error": body["error"], **({"output": rest} if rest else {})}

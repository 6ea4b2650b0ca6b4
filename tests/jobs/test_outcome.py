"""How a job ended, named once for the job stores, the metrics and RunPod's protocol."""

from services.core import errors
from services.jobs import outcome


def test_a_cancel_is_cancelled_whether_seen_as_the_flag_or_as_the_interrupted_answer():
    interrupted = errors.Interrupted("the job was cancelled")
    assert outcome.of_reply(interrupted.http_status, interrupted.code) == "cancelled"
    assert outcome.of_reply(200, None, cancel_asked=True) == "cancelled"
    assert outcome.of_reply(200, None) == "completed"
    assert outcome.of_reply(504, errors.JobTimeout.code) == "failed"


def test_runpod_statuses_map_both_ways():
    assert [outcome.RUNPOD_STATUS[state] for state in outcome.STATES] == [
        "IN_QUEUE",
        "IN_PROGRESS",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ]
    assert [outcome.of_runpod(s) for s in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")] == [
        "completed",
        "failed",
        "cancelled",
        "failed",
    ]


def test_a_handlers_error_makes_a_failed_runpod_job_and_the_rest_stays_its_output():
    assert outcome.as_runpod({"status": "ok"}) == {"status": "COMPLETED", "output": {"status": "ok"}}
    assert outcome.as_runpod({"error": "timeout: x", "refresh_worker": True}) == {
        "status": "FAILED",
        "error": "timeout: x",
        "output": {"refresh_worker": True},
    }

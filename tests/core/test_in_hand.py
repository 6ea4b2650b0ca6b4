"""The work in hand: what a drain waits for, and what its deadline cuts."""

import os

from services.core import drain, errors
from services.core.in_hand import CUT, InHand
from services.core.job_spec import Cancel
from services.core.run_dir import RunDir
from tests.stack import wait_until


def test_work_is_counted_while_held_and_gone_when_handed_over(tmp_path):
    layout = RunDir(str(tmp_path))
    in_hand = InHand(layout)
    job = in_hand.hold("job")
    with in_hand.hold("download"):
        assert sorted(drain.busy(layout)) == ["download", "job"]
    assert drain.busy(layout) == ["job"]
    job.release()
    job.release()  # twice is no error
    assert drain.busy(layout) == [] and os.listdir(layout.work_dir) == []


def test_the_deadline_stops_each_job_with_shutting_down_and_lets_go_of_the_rest(tmp_path):
    layout = RunDir(str(tmp_path))
    in_hand = InHand(layout)
    cancel = Cancel()
    running = in_hand.hold("job", cut=lambda: cancel.stop(CUT))
    in_hand.hold("async")  # a result nobody fetched: it dies with the process
    drain.begin(layout)
    assert not cancel.is_set()  # draining is not stopping
    drain.stop(layout)
    wait_until(lambda: cancel.is_set(), 10, "the cut")
    assert isinstance(cancel.error, errors.ShuttingDown) and cancel.error.http_status == 503
    wait_until(lambda: drain.busy(layout) == ["job"], 10, "the rest let go")
    running.release()  # the job answered
    assert drain.busy(layout) == []

"""Background work started one way: a crash is logged with where it happened, never with its
message, and a loop goes on after it."""

import logging
import threading

from services.core import background
from tests.stack import wait_until


def _fail(detail):
    raise RuntimeError(detail)


def test_where_names_the_frames_and_never_the_message():
    try:
        _fail("the user's prompt: a red fox")
    except RuntimeError as exc:
        said = background.where(exc)
    assert (
        said.startswith("RuntimeError at test_background.py:") and "in _fail <- test_background.py:" in said
    )
    assert "red fox" not in said


def test_a_thread_that_crashes_is_logged_not_raised(caplog):
    caplog.set_level(logging.ERROR)
    background.start("doomed", _fail, "the user's prompt").join(5)
    [line] = [r.getMessage() for r in caplog.records if "doomed" in r.getMessage()]
    assert "unexpected RuntimeError at test_background.py:" in line and "prompt" not in line


def test_a_loop_goes_on_after_a_crash_and_stops_when_told():
    rounds, stop = [], threading.Event()

    def step():
        rounds.append(1)
        if len(rounds) == 2:
            raise OSError("one bad round")

    thread = background.loop("steady", step, 0.01, until=stop.is_set)
    wait_until(lambda: len(rounds) >= 5, 5, "rounds after the crash")
    stop.set()
    thread.join(5)
    assert not thread.is_alive()

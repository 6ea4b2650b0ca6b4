"""The lock file on the model volume: exclusive, kept alive by its heartbeat, taken over from a
holder that went silent (by the waiter's own clock) or, on this machine, that exited."""

import subprocess
import sys
import time

import pytest

from services.models.volume_lock import Heartbeat, LockLost, VolumeLock
from tests.stack import ROOT


def test_one_holder_at_a_time_and_a_refreshed_lock_is_never_taken(tmp_path):
    path = str(tmp_path / ".m.lock")
    first, second = VolumeLock(path, stale_s=0.5), VolumeLock(path, stale_s=0.5)
    assert first.acquire(time.monotonic() + 1)
    beat = Heartbeat(0.1)
    beat.add(first)
    assert not second.acquire(time.monotonic() + 1.5)  # three stale times: the heartbeat kept it
    beat.discard(first)
    first.release()
    assert second.acquire(time.monotonic() + 1)


def test_a_silent_holder_loses_the_lock_after_the_stale_time_and_learns_it(tmp_path):
    path = str(tmp_path / ".m.lock")
    silent, waiter = VolumeLock(path, stale_s=0.5), VolumeLock(path, stale_s=0.5)
    assert silent.acquire(time.monotonic() + 1)
    started = time.monotonic()
    assert waiter.acquire(time.monotonic() + 5)
    assert time.monotonic() - started >= 0.5
    with pytest.raises(LockLost):
        silent.refresh()
    silent.release()  # not its own any more: the waiter keeps it
    with open(path) as handle:
        assert handle.read() == waiter.token


def test_a_holder_on_this_machine_that_exited_is_taken_over_at_once(tmp_path):
    path = str(tmp_path / ".m.lock")
    code = f"import time; from services.models.volume_lock import VolumeLock; VolumeLock({path!r}, 60).acquire(time.monotonic() + 5)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)  # took it and died holding it
    started = time.monotonic()
    assert VolumeLock(path, stale_s=60).acquire(time.monotonic() + 5)
    assert time.monotonic() - started < 5

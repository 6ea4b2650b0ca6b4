"""The drain state: one file in RUN_DIR that every process of the worker reads, and the work in
hand that PID 1 counts there."""

import os
import subprocess
import sys
import time

from services.core import drain
from services.core.run_dir import RunDir


def test_a_drain_begins_once_and_ends(tmp_path):
    layout = RunDir(str(tmp_path))
    assert drain.since(layout) is None and drain.state(layout) is None
    started = drain.begin(layout)
    assert drain.since(layout) == started.since and started.deadline is None
    assert drain.begin(layout) == started  # a second request keeps the first start
    drain.end(layout)
    assert drain.since(layout) is None
    drain.end(layout)  # ending twice is no error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stop_signal_gives_a_drain_on_request_its_deadline_and_then_it_stops(tmp_path):
    layout = RunDir(str(tmp_path))
    asked = drain.begin(layout)  # POST /drain
    deadline = time.time() + 20
    signalled = drain.begin(layout, deadline)  # then SIGTERM
    assert signalled.since == asked.since and signalled.deadline == deadline
    assert drain.begin(layout) == signalled  # POST /drain again does not take the deadline away
    assert not signalled.stopping
    stopped = drain.stop(layout)
    assert drain.state(layout) == stopped and stopped.stopping and stopped.deadline == deadline


def test_a_file_being_written_reads_as_draining(tmp_path):
    layout = RunDir(str(tmp_path))
    (tmp_path / "draining").write_text("")
    assert drain.since(layout) is not None


def test_busy_counts_the_work_of_live_processes_only(tmp_path):
    layout = RunDir(str(tmp_path))
    assert drain.busy(layout) == []  # no work folder yet
    os.makedirs(layout.work_dir)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    for name in (f"{os.getpid()}-0-job", f"{os.getpid()}-1-async", f"{gone.stdout.strip()}-0-job"):
        open(os.path.join(layout.work_dir, name), "x").close()
    assert sorted(drain.busy(layout)) == ["async", "job"]

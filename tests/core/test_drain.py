"""The drain state: one file in RUN_DIR that every process of the worker reads."""

from services.core import drain
from services.core.run_dir import RunDir


def test_a_drain_begins_once_and_ends(tmp_path):
    layout = RunDir(str(tmp_path))
    assert drain.since(layout) is None
    started = drain.begin(layout)
    assert drain.since(layout) == started
    assert drain.begin(layout) == started  # a second request keeps the first start
    drain.end(layout)
    assert drain.since(layout) is None
    drain.end(layout)  # ending twice is no error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_file_being_written_reads_as_draining(tmp_path):
    layout = RunDir(str(tmp_path))
    (tmp_path / "draining").write_text("")
    assert drain.since(layout) is not None

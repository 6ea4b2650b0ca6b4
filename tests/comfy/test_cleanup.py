"""What a job leaves in ComfyUI is removed: at once for its own files and history entry, and
wholesale (stray files, all history) when no job is in flight; a prompt that outlived its job
is watched until it ends."""

import os

import pytest

from services.comfy.cleanup import Cleanup
from services.comfy.client import ComfyUnreachable
from services.core import config
from tests.stack import wait_until


class FakeComfy:
    """The calls the clean-up makes, answered from a queue and a history the test sets."""

    def __init__(self):
        self.running: list[str] = []
        self.history_entries: dict[str, dict] = {}
        self.deleted: list[list[str]] = []
        self.cleared = 0
        self.queue_calls = 0

    def queue(self):
        self.queue_calls += 1
        return {"queue_running": [[0, pid, {}, {}, []] for pid in self.running], "queue_pending": []}

    def history(self, prompt_id):
        return self.history_entries.get(prompt_id)

    def delete_history(self, ids):
        self.deleted.append(list(ids))

    def clear_history(self):
        self.cleared += 1


@pytest.fixture
def io(tmp_path):
    settings = config.load({"ENCRYPTION_REQUIRED": "0", "RUN_DIR": str(tmp_path)})
    for kind in ("input", "output", "temp/temp"):
        os.makedirs(os.path.join(settings.comfy_io_dir, kind))
    return settings


def put(settings, relative):
    path = os.path.join(settings.comfy_io_dir, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write("x")
    return path


def files(settings):
    return sorted(
        os.path.relpath(os.path.join(d, f), settings.comfy_io_dir)
        for d, _, names in os.walk(settings.comfy_io_dir)
        for f in names
    )


def entry(filename, subfolder="", folder_type="output"):
    return {
        "outputs": {"9": {"images": [{"filename": filename, "subfolder": subfolder, "type": folder_type}]}}
    }


def test_with_another_job_in_flight_only_the_jobs_own_files_and_entry_go(io):
    comfy = FakeComfy()
    cleanup = Cleanup(io, comfy)
    cleanup.begin()  # the other job
    cleanup.begin()
    put(io, "input/job-a/photo.png")
    put(io, "output/a_00001_.png")
    put(io, "temp/temp/a_preview.png")
    put(io, "output/other_00001_.png")
    comfy.running = ["other"]
    mine = {
        "outputs": {
            **entry("a_00001_.png")["outputs"],
            "8": entry("a_preview.png", "", "temp")["outputs"]["9"],
        }
    }
    cleanup.end("job-a", "a", mine, [], sweep=True)
    wait_until(lambda: comfy.deleted == [["a"]], 5, "the clean-up")
    assert files(io) == ["output/other_00001_.png"] and comfy.cleared == 0


def test_when_no_job_is_in_flight_everything_goes_also_files_no_output_names(io):
    comfy = FakeComfy()
    cleanup = Cleanup(io, comfy)
    cleanup.begin()
    put(io, "output/checkpoints/trained.safetensors")  # written by a node, named by no output
    put(io, "output/a_00001_.png")
    cleanup.end("job-a", "a", entry("a_00001_.png"), [], sweep=True)
    wait_until(lambda: comfy.cleared == 1, 5, "the clean-up")
    assert files(io) == []
    assert sorted(os.listdir(io.comfy_io_dir)) == ["input", "output", "temp"]


def test_a_prompt_that_outlived_its_job_is_swept_when_it_ends(io):
    comfy = FakeComfy()
    cleanup = Cleanup(io, comfy)
    cleanup.begin()
    comfy.running = ["late"]
    cleanup.end("job-l", "late", None, [], sweep=True)
    late_file = put(io, "output/late_00001_.glb")  # written after the job answered
    wait_until(lambda: comfy.queue_calls >= 3, 5, "the watcher to look again while the prompt runs")
    assert comfy.cleared == 0 and os.path.exists(late_file)
    comfy.running = []
    wait_until(lambda: comfy.cleared == 1 and files(io) == [], 5, "the watcher to sweep")


def test_a_late_finisher_ending_while_another_job_runs_takes_its_named_files(io):
    comfy = FakeComfy()
    cleanup = Cleanup(io, comfy)
    cleanup.begin()
    comfy.running = ["late"]
    cleanup.end("job-l", "late", None, [], sweep=True)
    cleanup.begin()  # a new job, queued behind the late prompt
    put(io, "output/late_00001_.glb")
    put(io, "output/busy_00001_.png")
    comfy.history_entries["late"] = entry("late_00001_.glb")
    comfy.running = ["busy"]
    wait_until(lambda: ["late"] in comfy.deleted, 5, "the watcher to delete the late entry")
    assert files(io) == ["output/busy_00001_.png"] and comfy.cleared == 0


def test_under_a_hung_comfyui_the_files_its_messages_named_are_still_removed(io):
    comfy = FakeComfy()

    def hung():
        raise ComfyUnreachable("ComfyUI did not answer GET /queue (ReadTimeout)")

    comfy.queue = hung
    cleanup = Cleanup(io, comfy)
    cleanup.begin()
    put(io, "input/job-h/in.png")
    put(io, "output/h.png")
    put(io, "output/../../outside.png")
    cleanup.end("job-h", "h", None, [{"filename": "h.png"}, {"filename": "../../outside.png"}], sweep=False)
    wait_until(lambda: files(io) == [], 5, "the clean-up")
    assert os.path.exists(os.path.join(io.run_dir, "outside.png"))


def test_a_file_named_by_messages_and_entry_goes_once_so_the_next_jobs_file_of_that_name_stays(
    io, monkeypatch
):
    """ComfyUI names a new file after the highest number left in its folder: the moment a job's
    file is removed, the next job may save one of the same name."""
    comfy = FakeComfy()
    cleanup = Cleanup(io, comfy)
    cleanup.begin()  # the next job, running
    cleanup.begin()
    path = put(io, "output/a_00001_.png")
    removed = []
    remove = os.remove

    def remove_then_comfyui_saves_the_next_job_there(target):
        remove(target)
        removed.append(target)
        if len(removed) == 1:
            put(io, "output/a_00001_.png")  # the running job's SaveImage

    monkeypatch.setattr(os, "remove", remove_then_comfyui_saves_the_next_job_there)
    named = entry("a_00001_.png")
    cleanup.end("job-a", "a", named, named["outputs"]["9"]["images"], sweep=True)
    wait_until(lambda: comfy.deleted == [["a"]], 5, "the clean-up")
    assert removed == [path] and os.path.exists(path)
    assert comfy.queue_calls == 0  # no prompt outlived its job: ComfyUI's queue is not read

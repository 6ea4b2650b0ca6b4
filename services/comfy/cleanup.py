"""Leave nothing of a job in ComfyUI: its history entry, its inputs, its outputs, files no output
names, and whatever an interrupted prompt writes after its job answered.

The worker owns ComfyUI's input, output and temp folders (the launcher gives ComfyUI folders of
its own under RUN_DIR and empties them at every start). Jobs run in one process (one gunicorn
worker, or the serverless handler), so this object knows every job in flight:

- a job that ends takes its inputs, the files its outputs name and its history entry with it,
  whatever other jobs are running;
- when no job is in flight and ComfyUI's queue is empty, everything in the three folders and all
  of ComfyUI's history goes (files no output names, a late finisher's files);
- a prompt that outlived its job (an interrupt lands only at the next node boundary) is watched
  until it ends, and then the same.

All of it runs on one thread of its own, after the job answered (a job's answer does not wait
for its clean-up); a job counts as in flight until its clean-up ran, and a starting job waits for
a sweep in progress (`begin` takes the same lock), so a sweep never removes a running job's files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from services.comfy.client import ComfyClient
from services.core import background, errors
from services.core.config import Settings
from services.core.run_dir import IO_FOLDERS

log = logging.getLogger("worker.comfy")

WATCH_TICK_S = 0.5  # how often a prompt that outlived its job is looked for


@dataclass(frozen=True)
class _Ended:
    tag: str
    prompt_id: str | None
    entry: dict | None
    files: tuple[dict, ...]
    sweep: bool


class Cleanup:
    def __init__(self, settings: Settings, client: ComfyClient) -> None:
        self.settings = settings
        self.client = client
        self._lock = threading.Lock()
        self._in_flight = 0
        self._ended: set[str] = set()  # prompts that ended, their files gone, their entry not yet
        self._late: set[str] = set()  # prompts still in ComfyUI when their job answered
        self._jobs: queue.Queue[_Ended] = queue.Queue()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """A job starts: until its clean-up ran, nothing of ComfyUI's folders is swept wholesale."""
        with self._lock:
            self._in_flight += 1

    def end(
        self, tag: str, prompt_id: str | None, entry: dict | None, files: Iterable[dict], sweep: bool
    ) -> None:
        """A job ended, however. `entry` is its history entry when the prompt finished, `files`
        what its `executed` messages named; `sweep=False` when ComfyUI stopped answering (a hung
        ComfyUI is the watchdog's). Returns at once; the clean-up thread does the rest."""
        self._jobs.put(_Ended(tag, prompt_id, entry, tuple(files), sweep))
        with self._lock:
            if self._thread is None:
                self._thread = background.start("cleanup", self._work)

    def _work(self) -> None:
        """Take ended jobs one after another; while a prompt of ours outlives its job, sweep
        every WATCH_TICK_S until it has gone (a restarted ComfyUI answers an empty queue)."""
        while True:
            try:
                job = self._jobs.get(timeout=WATCH_TICK_S if self._late else None)
            except queue.Empty:
                job = None
            with self._lock:
                try:
                    if job is not None:
                        self._take(job)
                    elif self._late:
                        self._sweep()
                except Exception as exc:  # the thread must outlive any one failure
                    log.warning("clean-up failed: %s", type(exc).__name__)

    def _take(self, job: _Ended) -> None:
        self._in_flight -= 1
        shutil.rmtree(os.path.join(self.settings.comfy_folder("input"), job.tag), ignore_errors=True)
        files = list(job.files)
        if job.prompt_id is not None:
            if job.entry is not None:
                files += files_of(job.entry)
                self._ended.add(job.prompt_id)
            else:
                self._late.add(job.prompt_id)
        self._remove(files)
        if job.sweep:
            self._sweep()

    def _sweep(self) -> None:
        """ComfyUI's queue is read only while a prompt of ours outlived its job: otherwise every
        prompt of ours that ComfyUI has is a job in flight, and it has no other."""
        try:
            active: set[str] = set()
            if self._late:
                state = self.client.queue()
                active = {item[1] for item in state.get("queue_running", []) + state.get("queue_pending", [])}
            if self._in_flight == 0 and not active:
                self.client.clear_history()
                for kind in IO_FOLDERS:
                    _empty(self.settings.comfy_folder(kind))
                self._ended.clear()
                self._late.clear()
                return
            finished = self._late - active
            for prompt_id in finished:
                self._remove(files_of(self.client.history(prompt_id)))
            if self._ended or finished:
                self.client.delete_history(sorted(self._ended | finished))
            self._ended.clear()
            self._late -= finished
        except errors.WorkerError:
            log.info("ComfyUI did not answer the clean-up; it is tried again")

    def _remove(self, files: Iterable[dict]) -> None:
        """Each path once: ComfyUI names a new file after the highest number in its folder, so
        a name removed is soon another job's, and a second removal would take that one."""
        for path in dict.fromkeys(local_path(self.settings, item) for item in files):
            if path is not None:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.remove(path)


def local_path(settings: Settings, item: dict) -> str | None:
    """Where a file entry of ComfyUI's (`filename`, `subfolder`, `type`) lies in the worker's
    output or temp folder; None for other folders and for names that would leave them."""
    folder_type = item.get("type", "output")
    if folder_type not in ("output", "temp"):
        return None
    root = os.path.realpath(settings.comfy_folder(folder_type))
    if folder_type == "temp":
        root = os.path.join(root, "temp")  # ComfyUI appends "temp" to --temp-directory
    path = os.path.realpath(os.path.join(root, str(item.get("subfolder", "")), str(item["filename"])))
    return path if os.path.commonpath([path, root]) == root and path != root else None


def files_of(entry: dict | None) -> list[dict]:
    """Every file entry of a history entry or `executed` output, whatever its kind."""
    found = []
    for node_output in ((entry or {}).get("outputs") or {}).values():
        if isinstance(node_output, dict):
            for items in node_output.values():
                if isinstance(items, (list, tuple)):
                    found += [item for item in items if isinstance(item, dict) and "filename" in item]
    return found


def _empty(folder: str) -> None:
    """Remove what is in a folder, not the folder (ComfyUI makes subfolders again as it saves)."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)

"""Leave nothing of a job in ComfyUI: its history entry, its inputs, its outputs, files no output
names, and whatever an interrupted prompt writes after its job answered.

The worker owns ComfyUI's input, output and temp folders (the launcher gives ComfyUI folders of
its own under RUN_DIR and empties them at every start). Jobs run in one process (one gunicorn
worker, or the serverless handler), so this object knows every job in flight:

- a job that ends takes its inputs, the files its outputs name and its history entry with it at
  once, whatever other jobs are running;
- when no job is in flight and ComfyUI's queue is empty, everything in the three folders and all
  of ComfyUI's history goes (files no output names, a late finisher's files);
- a prompt that outlived its job (an interrupt lands only at the next node boundary) is watched
  until it ends, and then the same.

A job starts only once a clean-up in progress has finished (`begin` takes the same lock), so a
sweep never removes the inputs of a job that is starting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable

from services import errors
from services.comfy import launch
from services.comfy.client import ComfyClient
from services.config import Settings

log = logging.getLogger("worker.comfy")

WATCH_TICK_S = 0.5  # how often a prompt that outlived its job is looked for


class Cleanup:
    def __init__(self, settings: Settings, client: ComfyClient) -> None:
        self.settings = settings
        self.client = client
        self._lock = threading.RLock()
        self._in_flight = 0
        self._ended: set[str] = set()  # prompts that ended, their files gone, their entry not yet
        self._late: set[str] = set()  # prompts still in ComfyUI when their job answered
        self._watching = False

    def begin(self) -> None:
        """A job starts: from now until `end`, nothing of ComfyUI's folders is swept wholesale."""
        with self._lock:
            self._in_flight += 1

    def end(
        self, tag: str, prompt_id: str | None, entry: dict | None, files: Iterable[dict], sweep: bool
    ) -> None:
        """A job ended, however. `entry` is its history entry when the prompt finished, `files`
        what its `executed` messages named; `sweep=False` when ComfyUI stopped answering (a hung
        ComfyUI is the watchdog's, and more calls would only delay the answer)."""
        with self._lock:
            self._in_flight -= 1
            shutil.rmtree(os.path.join(launch.io_dir(self.settings, "input"), tag), ignore_errors=True)
            self._remove(files)
            if prompt_id is not None:
                if entry is not None:
                    self._remove(files_of(entry))
                    self._ended.add(prompt_id)
                else:
                    self._late.add(prompt_id)
            if sweep:
                self._sweep()

    def _sweep(self) -> None:
        try:
            queue = self.client.queue()
            active = {item[1] for item in queue.get("queue_running", []) + queue.get("queue_pending", [])}
            if self._in_flight == 0 and not active:
                self.client.clear_history()
                for kind in launch.IO_FOLDERS:
                    _empty(launch.io_dir(self.settings, kind))
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
        if self._late and not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, name="cleanup-watch", daemon=True).start()

    def _watch(self) -> None:
        """Sweep until no prompt of ours is left in ComfyUI; a restarted ComfyUI answers an
        empty queue, which ends the watch too."""
        while True:
            time.sleep(WATCH_TICK_S)
            with self._lock:
                try:
                    self._sweep()
                except OSError as exc:
                    log.warning("clean-up: %s", exc)
                if not self._late:
                    self._watching = False
                    return

    def _remove(self, files: Iterable[dict]) -> None:
        for item in files:
            folder_type = item.get("type", "output")
            if folder_type not in ("output", "temp"):
                continue
            root = os.path.realpath(launch.io_dir(self.settings, folder_type))
            if folder_type == "temp":
                root = os.path.join(root, "temp")  # ComfyUI appends "temp" to --temp-directory
            path = os.path.realpath(os.path.join(root, str(item.get("subfolder", "")), str(item["filename"])))
            if os.path.commonpath([path, root]) == root:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.remove(path)


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

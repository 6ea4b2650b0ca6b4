"""The `comfy` program after the launcher: run ComfyUI as a child and pass its output on,
everything until ComfyUI first answers, afterwards only when the operator allows it.

Boot output carries no job data, and hiding it turns a broken install into a silent crash
loop; what ComfyUI prints about prompts may quote a workflow's inputs. The last lines of a
ComfyUI that died before it answered are kept in a file for the entrypoint's last words. This process
is the one supervisord watches, so every line of a dying ComfyUI is passed on before
supervisord sees the program exit. It runs with ComfyUI's allow-listed environment; ComfyUI is
in its process group, so supervisord's stop signal reaches ComfyUI itself.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO
from urllib.parse import urlsplit

# ComfyUI logs this right after its port opens and before it serves a request, so every line
# before it is boot output
READY_LINE = b"To see the GUI go to:"
TAIL_LINES = 40
DRAIN_S = 1.0


class Relay:
    """Passes ComfyUI's lines on and remembers the last ones of its boot."""

    def __init__(
        self,
        tail_path: str,
        ready_path: str,
        comfy_url: str,
        show_after_boot: bool,
        json_instance: int | None = None,
    ) -> None:
        """`json_instance`: each line as the worker's JSON log schema (LOG_FORMAT=json), from
        this ComfyUI instance."""
        self.tail_path = tail_path
        self.json_instance = json_instance
        self.ready_path = ready_path
        with contextlib.suppress(OSError):
            os.remove(self.ready_path)
        self.show_after_boot = show_after_boot
        self.booting = True
        self.tail: collections.deque[bytes] = collections.deque(maxlen=TAIL_LINES)
        self.answered = threading.Event()
        threading.Thread(target=_wait_until_answers, args=(comfy_url, self.answered), daemon=True).start()

    def run(self, pipe: IO[bytes]) -> None:
        for line in pipe:
            if self.booting and self.answered.is_set():  # it answered before printing READY_LINE
                self._end_of_boot()
            if self.booting:
                self._pass(line, "comfy.boot")
                self.tail.append(line)
                if READY_LINE in line:
                    self._end_of_boot()
            elif self.show_after_boot:
                self._pass(line, "comfy.output")

    def _pass(self, line: bytes, event: str) -> None:
        """A line as ComfyUI printed it, or in the worker's JSON schema: written with json.dumps,
        as this relay runs in ComfyUI's Python with the standard library only."""
        if self.json_instance is None:
            _write(line)
            return
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        fields = {"program": "comfy", "instance": self.json_instance, "event": event}
        _write((json.dumps({"ts": stamp, "level": "INFO", "msg": text, **fields}) + "\n").encode())

    def died(self) -> None:
        """ComfyUI exited: if it never answered, its last lines are the container's last words
        should supervisord give up (a boot in progress never overwrites them)."""
        if not self.booting:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.tail_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.writelines(self.tail)

    def _end_of_boot(self) -> None:
        self.booting = False
        with contextlib.suppress(OSError):
            os.remove(self.tail_path)  # it came up: an earlier failed boot is no longer the story
        with contextlib.suppress(OSError), open(self.ready_path, "w", encoding="ascii") as handle:
            handle.write(str(os.getpid()))  # for the watchdog: this program's ComfyUI has booted
        if not self.show_after_boot:
            self._pass(
                b"[comfy] ComfyUI answers; its own output is not logged from now on "
                b"(LOG_SILENT or encryption; COMFY_LOG=1 shows it)\n",
                "comfy.silenced",
            )


def answers(comfy_url: str, timeout: float) -> bool:
    """GET /system_stats answers 200. The standard library's http.client: the processes that ask
    (this relay, the watchdog) stay small."""
    parts = urlsplit(comfy_url)
    probe = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        probe.request("GET", "/system_stats")
        return probe.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        probe.close()


def _wait_until_answers(comfy_url: str, answered: threading.Event) -> None:
    """A fallback for a ComfyUI that does not print READY_LINE."""
    while not answered.is_set():
        if answers(comfy_url, timeout=1):
            answered.set()
        time.sleep(0.25)


def _write(data: bytes) -> None:
    with contextlib.suppress(OSError):  # supervisord gone at shutdown: keep draining ComfyUI's pipe
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tail", required=True, help="where the last boot lines are kept")
    parser.add_argument("--ready", required=True, help="where the pid of a booted ComfyUI is written")
    parser.add_argument("--comfy-url", required=True)
    parser.add_argument("--show-after-boot", action="store_true")
    parser.add_argument("--json", type=int, metavar="INSTANCE", help="lines as JSON, of this instance")
    parser.add_argument("--cwd", required=True, help="ComfyUI's folder")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- ComfyUI's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the group's stop signal is ComfyUI's to obey
    comfy = subprocess.Popen(command, cwd=args.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    relay = Relay(args.tail, args.ready, args.comfy_url, args.show_after_boot, args.json)
    passing = threading.Thread(target=relay.run, args=(comfy.stdout,), daemon=True)
    passing.start()
    code = comfy.wait()
    # its last lines are in the pipe; a child it left behind may hold the pipe open, so do not
    # wait for the end of it (the watchdog kills such leftovers)
    passing.join(timeout=DRAIN_S)
    relay.died()
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())

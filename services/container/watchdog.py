"""supervisord event listener: keeps ComfyUI answering and the container honest.

- Every TICK_5: probe ComfyUI's HTTP port. Until a started ComfyUI first answers it is booting,
  however long that takes, up to COMFY_BOOT_TIMEOUT_S; one that never answers by then ends the
  container like a FATAL program. Once it has answered, WATCH_FAILS failed probes in a row
  restart `comfy` (a hung process never exits by itself), and such a restart counts as an exit
  toward the crash-loop limit below.
- PROCESS_STATE_EXITED of a ComfyUI program: kill what is left of its process group (a crashed ComfyUI can
  leave children holding VRAM or ports; stopasgroup only covers supervisord's own stops).
- PROCESS_STATE_FATAL of any program, or a program that keeps exiting (WATCH_MAX_EXITS
  unexpected exits within WATCH_EXIT_WINDOW_S: supervisord only calls a program FATAL when it
  dies within `startsecs`, so one that runs a few seconds and dies would loop forever): write
  a marker and shut supervisord down, so that the entrypoint exits non-zero and the platform
  replaces the container instead of keeping a worker that looks alive and does nothing.
- Every TICK_5, first: when the worker's PID 1 (WORKER_PID1, set by services.container.supervise)
  is no longer supervisord's parent, it was killed outright: shut supervisord down, so that no
  process of the worker outlives it.
- While the container stops after a drain (services.core.drain `stopping`), no probe: a ComfyUI
  still ending a cut prompt is not restarted, and the stop is no failure.
- With several ComfyUI instances (COMFY_INSTANCES), each is watched and restarted alone; one
  that goes FATAL, keeps exiting or never boots is stopped and out of the pool while others are
  left, and only the last one ends the container.

- LOG_FORMAT=json: supervisord prints nothing itself (`silent`), and every PROCESS_STATE event
  is said here as one line (`event`: process.state) instead.

stdout carries only the listener protocol (supervisor.childutils); decisions go to stderr,
one line each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import xmlrpc.client

from supervisor import childutils

from services.comfy import health, supervisor_state
from services.core import config, drain, logs
from services.core.config import Settings

log = logging.getLogger("watchdog")  # on stderr (services.core.logs.sayer, in main)


def say(message: str) -> None:
    log.info(message)


class Watchdog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rpc = supervisor_state.rpc(settings.supervisor_socket).supervisor
        # each ComfyUI instance's program: `comfy`, then `comfy-1`, ... (COMFY_INSTANCES)
        self.comfy = {
            own.comfy_program: own for own in map(settings.instance, range(settings.instance_count))
        }
        self.failures = dict.fromkeys(self.comfy, 0)
        self.answered_pid = dict.fromkeys(self.comfy, 0)  # the process that has answered at least once
        self.out: set[str] = set()  # instances taken out of the pool
        self.exits: dict[str, list[float]] = {}

    def on_event(self, headers: dict, payload: str) -> None:
        event = headers.get("eventname", "")
        fields = dict(token.split(":", 1) for token in payload.split("\n", 1)[0].split() if ":" in token)
        if event.startswith("TICK"):
            self.on_tick()
        if event.startswith("PROCESS_STATE") and self.settings.log_format == "json":
            self.said_state(event, fields)
        if event == "PROCESS_STATE_EXITED":
            program = fields.get("processname", "?")
            if program in self.comfy:
                self.reap(program, int(fields.get("pid", "0")))
            if fields.get("expected") == "0":
                self.count_exit(program)
        elif event == "PROCESS_STATE_FATAL":
            self.give_up(fields.get("processname", "?"), "is FATAL")

    def on_tick(self) -> None:
        if self.orphaned():
            return
        if (draining := drain.state(self.settings.run_layout)) is not None and draining.stopping:
            return  # the container stops: a ComfyUI busy with a cut prompt is not restarted
        for program in self.comfy:
            if program not in self.out:
                self.check_comfy(program)

    @staticmethod
    def said_state(event: str, fields: dict[str, str]) -> None:
        """supervisord's own line of a state change, in the schema (it is silent under json)."""
        program, state = fields.get("processname", "?"), event.removeprefix("PROCESS_STATE_")
        extra = {
            "event": "process.state",
            "process_name": program,
            "state": state,
            "from_state": fields.get("from_state"),
        }
        if "pid" in fields:
            extra["pid"] = int(fields["pid"])
        log.log(
            logging.WARNING if state in ("FATAL", "BACKOFF", "EXITED") else logging.INFO,
            "%s: %s -> %s",
            program,
            fields.get("from_state", "?"),
            state,
            extra={**extra, "program": "supervisord"},
        )

    def orphaned(self) -> bool:
        """supervisord outlived the worker's PID 1 (SIGKILL, the OOM killer, a harness that gave
        up): it runs in a session of its own, so nothing else would stop it and what it runs.
        Then it is shut down, and everything with it."""
        supervisord = os.getppid()
        if self.settings.pid1 is None or parent_of(supervisord) in (self.settings.pid1, None):
            return False
        say(f"the worker's PID 1 ({self.settings.pid1}) is gone -> shutting supervisord down")
        self.rpc.shutdown()
        return True

    def check_comfy(self, program: str) -> None:
        own = self.comfy[program]
        info = self.rpc.getProcessInfo(program)
        if info["statename"] != "RUNNING":
            self.failures[program] = 0
            return
        if info["pid"] != self.answered_pid[program]:  # booting
            if health.booted(own, info["pid"]) or self._answers(own):
                self.answered_pid[program], self.failures[program] = info["pid"], 0
            elif info["now"] - info["start"] >= self.settings.comfy_boot_timeout_s:
                self.give_up(
                    program,
                    f"did not answer within {self.settings.comfy_boot_timeout_s:g} s of starting "
                    "(COMFY_BOOT_TIMEOUT_S)",
                )
            return
        if self._answers(own):
            self.failures[program] = 0
            return
        self.failures[program] += 1
        if self.failures[program] < self.settings.watch_fails:
            return
        say(f"{program} did not answer {self.failures[program]} probes in a row -> restarting it")
        self.failures[program] = 0
        self.rpc.stopProcess(program)
        self.rpc.startProcess(program, False)
        self.count_exit(program)

    def _answers(self, own: Settings) -> bool:
        return health.answers(own, self.settings.watch_probe_timeout_s)

    def count_exit(self, program: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        window = self.settings.watch_exit_window_s
        recent = [t for t in self.exits.get(program, []) if now - t < window] + [now]
        self.exits[program] = recent
        if len(recent) >= self.settings.watch_max_exits:
            self.give_up(program, f"exited {len(recent)} times within {window:g} s")

    def reap(self, program: str, pid: int) -> None:
        if pid <= 1:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
            say(f"killed leftover process group {pid} of {program}")
        except ProcessLookupError:
            return
        except PermissionError:
            say(f"could not kill leftover process group {pid} of {program}")

    def give_up(self, program: str, why: str) -> None:
        """A ComfyUI instance while others are left: out of the pool (stopped, jobs go to the
        others). Anything else, or the last instance: end the container."""
        left = [p for p in self.comfy if p not in self.out and p != program]
        if program not in self.comfy or not left:
            self.shut_down(program, why)
            return
        self.out.add(program)
        self.exits.pop(program, None)
        with contextlib.suppress(xmlrpc.client.Fault):  # FATAL: not running already
            self.rpc.stopProcess(program)
        say(
            f"{program} {why} -> taken out of the pool; {len(left)} of {len(self.comfy)} ComfyUI instances left"
        )

    def shut_down(self, program: str, why: str) -> None:
        layout = self.settings.run_layout
        with open(layout.fatal_marker, "w") as marker:  # PID 1's last words name both
            marker.write(f"{program}\n{layout.boot_tail(program)}" if program in self.comfy else program)
        say(f"{program} {why} -> shutting supervisord down so the container exits non-zero")
        self.exits.clear()
        self.rpc.shutdown()


def parent_of(pid: int) -> int | None:
    """From /proc/<pid>/stat (its 4th field); None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def main() -> int:
    settings = config.load()
    logs.sayer("watchdog", settings.log_format, sys.stderr)  # stdout: the listener protocol
    watchdog = Watchdog(settings)
    programs = ", ".join(watchdog.comfy)
    say(
        f"watching {programs}: boot deadline {settings.comfy_boot_timeout_s:g} s, then {settings.watch_fails} "
        "failed probes restart it"
    )
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            watchdog.on_event(headers, payload)
        except Exception as exc:  # a listener that dies stops all watching; report and go on
            say(f"error handling {headers.get('eventname')}: {type(exc).__name__}")
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())

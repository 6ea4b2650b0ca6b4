"""PID 1 for the container's life, once the entrypoint has checked the configuration.

The entrypoint execs this module (same pid) so that what stays resident imports next to nothing
(about 10 MiB instead of the entrypoint's 21): it starts supervisord in a session of its own,
drains on the platform's stop signal, reaps orphans, and turns a FATAL shutdown into exit 1.

SIGTERM or SIGINT (`docker stop`, Kubernetes, Ctrl-C) begins the drain (services.core.drain):
new work is refused at once, and supervisord is told to stop once the work in hand is done, or
at DRAIN_TIMEOUT_S, when what is left is cut (each process cuts its own, and a few seconds are
given for the answers to go out). A second signal, or DRAIN_TIMEOUT_S=0, stops at once. SIGHUP
reads API_KEYS_FILE again and says what is in force (services.container.keys_check); it never
reaches supervisord, whose reload would restart every program and cut every job.

Usage: python -m services.container.supervise MARKER SOCKET RUN_DIR DRAIN_TIMEOUT_S LOG_FORMAT KEYS_FILE -- SUPERVISORD COMMAND...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time

from services.core import drain, log_line
from services.core.run_dir import RunDir

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
WAITED = {signal.SIGCHLD, signal.SIGHUP, *STOP_SIGNALS}
TICK_S = 0.1  # how often a drain looks at the work in hand
CUT_GRACE_S = 5.0  # after the deadline: for the cut jobs to stop in ComfyUI and answer


def main(argv: list[str]) -> int:
    global _FORMAT
    try:
        marker, socket_path, run_dir, timeout, _FORMAT, keys_file, separator, *command = argv
        drain_timeout_s = float(timeout)
    except ValueError:
        separator, command = "", []
    if separator != "--" or not command:
        _say(f"usage: {__doc__.strip().splitlines()[-1]}", "ERROR")
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)  # taken one at a time by sigtimedwait
    # its own session: whatever it leaves behind can be found and ended (reap_session)
    # WORKER_PID1: the watchdog ends the tree once this process is gone (killed outright)
    environment = {**os.environ, "WORKER_PID1": str(os.getpid())}
    child = os.posix_spawn(command[0], command, environment, setsid=True, setsigmask=set())
    nudge(socket_path, child)
    layout = RunDir(run_dir)
    code = Supervision(child, layout, drain_timeout_s, keys_file).run()
    reap_session(child)
    reap_orphans()
    with contextlib.suppress(OSError):  # nothing of the worker runs now: no drain is left behind
        drain.clear(layout)
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as handle:
            program, _, boot_tail = handle.read().partition("\n")
        for line in last_words(program, boot_tail):
            _say(line, "ERROR")
        return 1
    return code


class Supervision:
    """supervisord's life seen from PID 1: running, draining, stopping; and its exit code."""

    def __init__(self, child: int, layout: RunDir, drain_timeout_s: float, keys_file: str = "") -> None:
        self.child = child
        self.layout = layout
        self.drain_timeout_s = drain_timeout_s
        self.keys_file = keys_file  # API_KEYS_FILE, "" when unset
        self.deadline: float | None = None  # monotonic, while draining
        self.cut_at: float | None = None
        self.stopped = False  # supervisord was told to stop

    def run(self) -> int:
        """Until supervisord exits, reaping every other child that ends meanwhile: as a
        container's PID 1 this process inherits whatever is orphaned inside it (a crashed
        ComfyUI's helpers), and an unreaped orphan stays a zombie."""
        while True:
            timeout = TICK_S if self.deadline is not None and not self.stopped else None
            info = signal.sigtimedwait(WAITED, timeout) if timeout else signal.sigwaitinfo(WAITED)
            if info is not None and info.si_signo == signal.SIGCHLD:
                code = self._reap()
                if code is not None:
                    return code
            elif info is not None and info.si_signo == signal.SIGHUP:
                self._check_keys()
            elif info is not None:
                self._stop_asked(info.si_signo)
            if self.deadline is not None and not self.stopped:
                self._drain_round()

    def _reap(self) -> int | None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                return None
            if pid == self.child:
                return os.waitstatus_to_exitcode(status)

    def _check_keys(self) -> None:
        """In a child of its own (reaped like any other): PID 1 stays small and never waits."""
        if not self.keys_file:
            _say("SIGHUP: there is no API_KEYS_FILE to read again; nothing restarts")
            return
        check = [sys.executable, "-m", "services.container.keys_check", self.keys_file, _FORMAT]
        try:
            os.posix_spawn(sys.executable, check, os.environ, setsigmask=set())
        except OSError as exc:
            _say(f"SIGHUP: cannot read API_KEYS_FILE again ({exc.strerror})", "ERROR")

    def _stop_asked(self, number: int) -> None:
        if self.deadline is not None or self.drain_timeout_s <= 0:
            self._stop(number, "stopping now")  # a second signal, or no drain wanted
            return
        try:
            drain.begin(self.layout, time.time() + self.drain_timeout_s)
        except OSError as exc:
            self._stop(number, f"cannot drain ({exc.strerror}): stopping now")
            return
        self.deadline = time.monotonic() + self.drain_timeout_s
        _say(
            f"{signal.Signals(number).name}: draining (no new work; the work in hand "
            f"finishes within DRAIN_TIMEOUT_S={self.drain_timeout_s:g} s)"
        )

    def _drain_round(self) -> None:
        busy = drain.busy(self.layout)
        now = time.monotonic()
        if drain.since(self.layout) is None:  # removed by hand: a stop signal's drain stays
            if self.cut_at is None:
                drain.begin(self.layout, time.time() + self.deadline - now)
            else:
                drain.stop(self.layout)
        if not busy:
            self._stop(signal.SIGTERM, "drained: nothing left in hand, stopping")
        elif self.cut_at is None and now >= self.deadline:
            self.cut_at = now
            drain.stop(self.layout)
            _say(f"DRAIN_TIMEOUT_S passed: cutting what is left ({_counted(busy)})")
        elif self.cut_at is not None and now >= self.cut_at + CUT_GRACE_S:
            self._stop(signal.SIGTERM, f"stopping with {_counted(busy)} still in hand")

    def _stop(self, number: int, why: str) -> None:
        with contextlib.suppress(OSError):
            drain.stop(self.layout)
        _say(f"{why}")
        self.stopped = True
        self._pass_on(number)

    def _pass_on(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, number)


def _counted(kinds: list[str]) -> str:
    counts = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
    return ", ".join(f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in counts.items())


_FORMAT = "text"  # LOG_FORMAT, from the command line: PID 1 reads no settings


def _say(text: str, level: str = "INFO") -> None:
    """To stderr, unless it is gone (the log pipe of a dying container or a killed test run):
    the clean-up after supervisord must run to its end either way. PID 1 speaks as the
    entrypoint it was (`event`: supervise)."""
    with contextlib.suppress(OSError):
        log_line.write("entrypoint", text, _FORMAT, level, event="supervise")


def _running(pid: int) -> bool:
    """Without reaping it (wait_reaping collects its status)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def nudge(socket_path: str, child: int, seconds: float = 3.0) -> None:
    """Knock once on supervisord's control socket as soon as it listens. supervisord starts its
    programs only after its first poll returns, which without any traffic takes its full 1 s
    timeout: a connection makes it return at once (start -> API answering, 1.6 s -> 0.6 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _running(child):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as knock:
            try:
                knock.connect(socket_path)
                return
            except OSError:
                time.sleep(0.01)


def reap_session(session: int) -> None:
    """Kill what is left of supervisord's session: a supervisord that died abruptly (killed, or
    its log pipe gone) leaves its programs running, and ComfyUI would keep its GPU memory."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # the session id, 6th field of /proc/<pid>/stat
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                _say(f"killed leftover process {entry}")


def reap_orphans(seconds: float = 2.0) -> None:
    """After supervisord: collect what reap_session killed and orphans still ending."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def last_words(program: str, boot_tail: str) -> list[str]:
    """Why the container stops, line by line: for a ComfyUI that never came up, the last lines
    it printed (boot output only: the launcher drops them once ComfyUI answers). The watchdog
    names the file (`boot_tail`, empty for other programs) beside the program in the marker."""
    words = f"exiting 1: program {program} failed for good"
    if not boot_tail:
        return [words]
    try:
        with open(boot_tail, encoding="utf-8", errors="replace") as handle:
            tail = handle.read().rstrip().splitlines()
    except OSError:
        return [words]
    return [f"{words}; the last lines ComfyUI printed:", *(f"  {line}" for line in tail)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""PID 1 for the container's life, once the entrypoint has checked the configuration.

The entrypoint execs this module (same pid) so that what stays resident imports next to nothing
(about 10 MiB instead of the entrypoint's 21): it starts supervisord in a session of its own,
passes the platform's signals on, reaps orphans, and turns a FATAL shutdown into exit 1.

Usage: python -m services.container.supervise MARKER SOCKET -- SUPERVISORD COMMAND...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time


def main(argv: list[str]) -> int:
    marker, socket_path, separator, *command = argv
    if separator != "--" or not command:
        _say(f"[entrypoint] usage: {__doc__.strip().splitlines()[-1]}")
        return 2
    # its own session: whatever it leaves behind can be found and ended (reap_session)
    child = os.posix_spawn(command[0], command, os.environ, setsid=True)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda received, _frame: _pass_on(child, received))
    nudge(socket_path, child)
    code = wait_reaping(child)
    reap_session(child)
    reap_orphans()
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as handle:
            program, _, boot_tail = handle.read().partition("\n")
        _say(last_words(program, boot_tail))
        return 1
    return code


def _say(text: str) -> None:
    """To stderr, unless it is gone (the log pipe of a dying container or a killed test run):
    the clean-up after supervisord must run to its end either way."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def _pass_on(child: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, number)


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


def wait_reaping(child: int) -> int:
    """Wait for supervisord, reaping every other child that ends meanwhile: as a container's
    PID 1 this process inherits whatever is orphaned inside it (a crashed ComfyUI's helpers),
    and an unreaped orphan stays a zombie."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == child:
            return os.waitstatus_to_exitcode(status)


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
                _say(f"[entrypoint] killed leftover process {entry}")


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


def last_words(program: str, boot_tail: str) -> str:
    """Why the container stops: for a ComfyUI that never came up, the last lines it printed
    (boot output only: the launcher drops them once ComfyUI answers). The watchdog names the
    file (`boot_tail`, empty for other programs) beside the program in the marker."""
    words = f"[entrypoint] exiting 1: program {program} failed for good"
    if not boot_tail:
        return words
    try:
        with open(boot_tail, encoding="utf-8", errors="replace") as handle:
            tail = handle.read().rstrip().splitlines()
    except OSError:
        return words
    return "\n".join(
        [f"{words}; the last lines ComfyUI printed:", *(f"[entrypoint]   {line}" for line in tail)]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

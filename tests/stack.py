"""Start the real worker the way the container does (entrypoint -> supervisord -> programs).

Each `Stack` gets its own temporary run dir, ephemeral ports and log capture, and is stopped
by its own supervisord pid (never by name).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import requests

from services.comfy import supervisor_state
from services.jobs import envelopes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN_DIR = os.path.join(ROOT, "tests", "comfy_standin")


def copy_checkout(folder: str) -> None:
    """The project as a fresh clone of it would be (what git tracks or would track), into `folder`."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if os.path.exists(os.path.join(ROOT, name)):  # not deleted in the work tree
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(folder, name))


@dataclass(frozen=True)
class Backend:
    """What answers as ComfyUI: the stand-in (make test) or the real one (make test-real)."""

    name: str
    comfyui_dir: str
    python: str

    @property
    def env(self) -> dict[str, str]:
        return {"COMFYUI_DIR": self.comfyui_dir, "COMFY_PYTHON": self.python}


STANDIN = Backend("standin", STANDIN_DIR, sys.executable)


def real_backend() -> Backend:
    """The unmodified ComfyUI: COMFYUI_DIR and COMFY_PYTHON when set, else the checkout's own
    .comfyui/ (what `make run` or `make comfyui` installs). Missing is a failure, never a skip."""
    install = os.path.join(ROOT, ".comfyui")
    comfyui_dir = os.environ.get("COMFYUI_DIR") or os.path.join(install, "ComfyUI")
    python = os.environ.get("COMFY_PYTHON") or os.path.join(install, "venv", "bin", "python")
    if not (os.path.isfile(os.path.join(comfyui_dir, "main.py")) and os.access(python, os.X_OK)):
        raise RuntimeError(
            f"no ComfyUI for the real tier: {comfyui_dir}/main.py or {python} is missing. Install it with "
            "`make comfyui` (COMFYUI_SOURCE=<git URL, tarball or repository> if upstream is out of reach), "
            "or set COMFYUI_DIR and COMFY_PYTHON to an existing ComfyUI and its Python"
        )
    return Backend("real", comfyui_dir, python)


def installed_real_backend(required: bool) -> Backend | None:
    """For the benchmarks: the real backend, or None (and why, printed) when it is not installed
    and the caller can go on without it."""
    try:
        return real_backend()
    except RuntimeError as exc:
        if required:
            raise SystemExit(str(exc)) from None
        print(f"real ComfyUI: not measured ({exc})")
        return None


def free_port(count: int = 1) -> int:
    """A free port (the first of `count` in a row) below the kernel's ephemeral range: outgoing
    connections take their local ports from that range, and one could take ours before a
    slow-booting server binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
        low = int(handle.read().split()[0])
    for _ in range(100):
        port = random.randint(10000, low - count)
        chosen = range(port, port + count)
        if not _GIVEN.intersection(chosen) and all(_bindable(p) for p in chosen):
            _GIVEN.update(chosen)  # a stack still booting has not bound it yet: never give it twice
            return port
    raise RuntimeError("no free port found below the ephemeral range")


_GIVEN: set[int] = set()  # every port free_port gave in this process


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Stack:
    """One supervised worker. `env` overrides the defaults chosen here for tests."""

    running: ClassVar[set[Stack]] = set()  # stopped at the end of the session whatever happened

    def __init__(
        self, mode: str, env: dict[str, str] | None = None, key: bool = True, backend: Backend = STANDIN
    ) -> None:
        self.mode = mode
        self.backend = backend
        self.run_dir = tempfile.mkdtemp(prefix="cw-")
        self.port = free_port()
        instances = (env or {}).get("COMFY_INSTANCES", "1")
        self.instances = int(instances) if instances.isdigit() else 1
        self.comfy_port = free_port(self.instances)  # instance i listens on COMFY_PORT + i
        self.private_key, self.public_key = envelopes.keypair() if key else (None, None)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.run_dir,
            "LAUNCH_MODE": mode,
            "API_PORT": str(self.port),
            "COMFY_PORT": str(self.comfy_port),
            "RUN_DIR": self.run_dir,
            **backend.env,
            "COMFYUI_MODEL_DIR": os.path.join(self.run_dir, "models"),
            "DRY_RUN": "1",
            "COMFY_USER": "root",  # no system user made per test; tests of the boundary name one
            "DRAIN_TIMEOUT_S": "2",  # a stop waits this long for what a test left running
        }
        if self.private_key:
            self.env["WORKER_PRIVATE_KEY_B64"] = self.private_key
        self.env.update(env or {})
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self.log_closed = threading.Event()  # everything the stack printed, boot to exit, is read

    # lifecycle -----------------------------------------------------------------------------
    def start(self, wait_for: tuple[str, ...] = ()) -> Stack:
        if self.proc is not None:  # a second worker on the same run dir and ports, and a leak
            raise RuntimeError("this stack was started already (`with Stack(...)` starts it)")
        self.proc = self.spawn()
        Stack.running.add(self)
        threading.Thread(target=self._read_log, daemon=True).start()
        for name in wait_for:
            self.wait_state(name, "RUNNING", timeout=30)
        if "api" in wait_for:  # RUNNING is supervisord's word after startsecs; gunicorn may still bind
            self.wait_http("/healthz", timeout=30)
        return self

    def spawn(self) -> subprocess.Popen:
        """The entrypoint as the container runs it, its output on a pipe; `start` also reads
        that pipe and tracks the stack for the end of the session."""
        return subprocess.Popen(
            [sys.executable, "-m", "services.container.entrypoint"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> Stack:
        """Start, then wait until the mode's programs run and it answers like a client expects:
        /readyz (ComfyUI answers, or DRY_RUN) in api mode, the local queue's health otherwise."""
        return self.start().wait_ready()

    def wait_ready(self) -> Stack:
        """`ready` for a stack started already (several started side by side boot faster)."""
        dry_run = self.env.get("DRY_RUN") == "1"
        programs = ("api",) if self.mode == "api" else ("handler", "localqueue")
        for name in programs if dry_run else (*programs, "comfy"):
            self.wait_state(name, "RUNNING", timeout=30)
        key = self.env.get("API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else None
        # the real ComfyUI's boot takes ~5 s alone, well over 30 s beside other boots on 2 cores
        boot = 30 if dry_run or self.backend is STANDIN else 300
        path = "/readyz" if self.mode == "api" else "/v2/LOCAL/health"
        self.wait_http(path, headers=headers, timeout=boot)
        return self

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM the entrypoint (services.container.supervise by then), which passes it on to supervisord."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        Stack.running.discard(self)
        return self.proc.returncode

    def terminate(self) -> None:
        """SIGTERM to the entrypoint only (PID 1 in a container), as `docker stop` and
        Kubernetes send it; `exit_code` waits for the end."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def exit_code(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL every process of the stack at once, as a pod that loses its machine: no
        hand-over, no clean-up (its session, which supervisord's programs keep)."""
        assert self.proc is not None
        sessions = {self.proc.pid, supervisor_state.rpc(self.socket).supervisor.getPID()}
        for pid in self.sessions(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        wait_until(lambda: not self.sessions(sessions), 10, "the killed stack's processes to go")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        Stack.running.discard(self)

    @staticmethod
    def sessions(ids: set[int]) -> list[int]:
        """The live processes of these sessions (the entrypoint's, and supervisord's own)."""
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in ids and fields[0] != "Z":
                found.append(int(entry))
        return found

    def __enter__(self) -> Stack:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # observation ---------------------------------------------------------------------------
    def _read_log(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            with self._log_lock:
                self._log.append(raw.decode("utf-8", "replace"))
        self.log_closed.set()

    @property
    def log(self) -> str:
        with self._log_lock:
            return "".join(self._log)

    @property
    def socket(self) -> str:
        return os.path.join(self.run_dir, "supervisor.sock")

    def state(self, name: str) -> str:
        return supervisor_state.process_state(self.socket, name)

    def programs(self) -> dict[str, str]:
        infos = supervisor_state.rpc(self.socket).supervisor.getAllProcessInfo()
        return {info["name"]: info["statename"] for info in infos}

    def api_processes(self) -> tuple[int, list[int]]:
        """The gunicorn master of the `api` program and its worker pids."""
        master = supervisor_state.rpc(self.socket).supervisor.getProcessInfo("api")["pid"]
        with open(f"/proc/{master}/task/{master}/children") as handle:
            return master, [int(pid) for pid in handle.read().split()]

    def comfy_dir(self, instance: int = 0) -> str:
        """ComfyUI instance's own folder in the run dir."""
        return os.path.join(self.run_dir, "comfy" if instance == 0 else f"comfy-{instance}")

    def job_files(self) -> list[str]:
        """Every file in each ComfyUI instance's input, output and temp folders (jobs must leave none)."""
        kinds = ("input", "output", "temp")
        roots = [os.path.join(self.comfy_dir(i), kind) for i in range(self.instances) for kind in kinds]
        return sorted(os.path.join(d, f) for root in roots for d, _, files in os.walk(root) for f in files)

    @staticmethod
    def children(pid: int) -> list[int]:
        """The processes whose parent is `pid` (ComfyUI is the child of the `comfy` program)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def wait_state(self, name: str, state: str, timeout: float = 30) -> None:
        wait_until(lambda: self.state(name) == state, timeout, f"{name} to be {state}\n{self.log}")

    def wait_http(self, path: str, timeout: float = 30, headers: dict | None = None) -> None:
        def answers() -> bool:
            try:
                return requests.get(self.url + path, timeout=1, headers=headers).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answers, timeout, f"{path} to answer 200\n{self.log}")

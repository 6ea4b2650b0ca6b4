"""A real Redis for the tests: Debian's `redis-server` on a free port in a temporary folder,
stopped by its pid. Installed from Debian's packages when missing and the tests run as root."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile

import redis

from tests.stack import free_port, wait_until

INSTALL_HINT = "install Debian's redis-server (apt-get install redis-server) or run the tests as root"


def binary() -> str:
    """The redis-server binary, installed first when it is missing (once for parallel runners)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"redis-server is not installed: {INSTALL_HINT}")
    with open(os.path.join(tempfile.gettempdir(), "comfy-worker-redis-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists("/usr/bin/redis-server"):
            _apt_install()
    return "/usr/bin/redis-server"


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    for command in ([*install], ["apt-get", "update"], [*install]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if command[1] == "install" and done.returncode == 0:
            return
    raise RuntimeError(
        f"apt-get could not install redis-server: {done.stderr.strip()[-400:]}; {INSTALL_HINT}"
    )


class RedisServer:
    """`start`, `kill` (SIGKILL, as a crash) and `start` again on the same port; no persistence."""

    def __init__(self) -> None:
        self.binary = binary()
        self.port = free_port()
        self.folder = tempfile.mkdtemp(prefix="cw-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.folder,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _answers(client), 20, f"redis-server on port {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False

"""A real Redis for the tests: Debian's `redis-server` on a free port in a temporary folder,
stopped by its pid. Installed from Debian's packages when missing and the tests run as root."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile

import redis

from tests.debian import installed
from tests.stack import free_port, wait_until


def binary() -> str:
    return installed("redis-server", "redis-server")


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

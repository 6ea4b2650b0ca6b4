"""Debian's packages the tests use (redis-server, chromium): found, or installed once when
missing and the tests run as root (parallel runners wait for one another)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile


def installed(binary: str, package: str) -> str:
    """The path of `binary`, from `package` when it is not there yet; RuntimeError with what to do."""
    path = f"/usr/bin/{binary}"
    found = shutil.which(binary) or (path if os.path.exists(path) else None)
    if found:
        return found
    hint = f"install Debian's {package} (apt-get install {package}) or run the tests as root"
    if os.geteuid() != 0:
        raise RuntimeError(f"{binary} is not installed: {hint}")
    with open(os.path.join(tempfile.gettempdir(), f"comfy-worker-{package}-install.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            _apt_install(package, hint)
    return path


def _apt_install(package: str, hint: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    for command in ([*install], ["apt-get", "update"], [*install]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if command[1] == "install" and done.returncode == 0:
            return
    raise RuntimeError(f"apt-get could not install {package}: {done.stderr.strip()[-400:]}; {hint}")

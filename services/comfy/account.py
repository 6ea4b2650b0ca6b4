"""ComfyUI's own user: which one it is, making it where it does not exist, and what it can reach.

Started as root, the worker runs ComfyUI under a uid of its own, so ComfyUI and its custom nodes
cannot read the memory, environment or files of the processes that hold the key and tokens.
"""

from __future__ import annotations

import os
import pwd
import subprocess

from services.core.config import Settings

NO_SHELL = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")


class AccountError(RuntimeError):
    """ComfyUI's user cannot be had; the message says why."""


def comfy_account(settings: Settings) -> pwd.struct_passwd | None:
    """ComfyUI's own user: COMFY_USER when the worker starts as root and that user exists and
    is not root; None when ComfyUI runs as the worker's user."""
    if os.getuid() != 0:
        return None
    try:
        account = pwd.getpwnam(settings.comfy_user)
    except KeyError:
        return None
    return account if account.pw_uid != 0 else None


def create(name: str) -> pwd.struct_passwd:
    """A system user without a login shell or a home (the launcher gives ComfyUI one in the run
    dir), so a pod or VM needs no preparation."""
    shell = next((path for path in NO_SHELL if os.path.exists(path)), NO_SHELL[-1])
    command = [
        "useradd",
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        name,
    ]
    try:
        made = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise AccountError(f"cannot create the user {name!r}: useradd: {exc.strerror}") from None
    try:
        return pwd.getpwnam(name)  # also when another worker made it a moment ago
    except KeyError:
        why = (made.stderr.strip().splitlines() or [f"exit {made.returncode}"])[-1]
        raise AccountError(f"cannot create the user {name!r}: {why}") from None


def unreachable(account: pwd.struct_passwd, needs: list[tuple[str, int]]) -> str | None:
    """The first path that `account` cannot reach: each of `needs` is (path, os.access mode),
    through every folder on its way and every link. Asked by a child that takes the account's
    uid and groups, so the kernel's own rules answer (modes, ACLs, a network volume's squash).
    A path that does not exist yet is not in the way: the entrypoint makes it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(account.pw_name, account.pw_gid))
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            found = next(filter(None, (_blocker(path, mode) for path, mode in needs)), "")
            os.write(write_end, found.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AccountError(f"cannot take uid {account.pw_uid} to check what it can reach")
    return answer or None


def _blocker(path: str, mode: int, links: int = 40) -> str | None:
    """The folder or file on the way to `path` that stops this process, following links."""
    path = os.path.abspath(path)
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        step = "/" + "/".join(parts[:depth])
        last = depth == len(parts)
        if not os.path.lexists(step):
            return None
        if os.access(step, mode if last else os.X_OK):
            continue
        if os.path.islink(step) and links > 0:
            target = os.path.join(os.path.dirname(step), os.readlink(step))
            return _blocker(target, mode if last else os.X_OK, links - 1) or step
        return step
    return None

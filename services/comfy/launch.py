"""supervisord's `comfy` program: prepare ComfyUI's folders, flags and environment, then hand
over to the relay (`services/comfy/relay.py`, copied beside ComfyUI's folders and run by
ComfyUI's own Python), which runs ComfyUI and passes its output on.

ComfyUI and its custom nodes are not trusted with the worker's secrets: the hand-over is an
exec with an allow-listed environment (`comfy_environment`), so from then on no process of the
program holds the key or a token; started as root, the launcher first drops to ComfyUI's own
user (`comfy_account`), so ComfyUI cannot read the processes that do hold them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import sys

from services.comfy import devices, preflight, starts
from services.comfy.account import comfy_account
from services.core import config, logs
from services.core.config import Settings
from services.core.run_dir import IO_FOLDERS
from services.models import model_folders

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
# what ComfyUI gets of the worker's environment: paths, locale, GPU runtimes, thread limits
_PASSED = {"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "HF_HOME", "HF_HUB_OFFLINE"}
SECRET_INSIDE = 8  # shorter secrets are matched whole: inside values they would match by chance
_PASSED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "HSA_", "PYTORCH_", "TORCH_", "OMP_", "MKL_")


def comfy_environment(environ: dict[str, str], settings: Settings, home: str) -> dict[str, str]:
    """The allow-listed environment of ComfyUI: never the worker's key, API key, tokens, bucket
    credentials or STATE_URL, whatever their names (also when COMFY_ENV names them); COMFY_ENV
    names any more the operator passes on."""
    passed = (_PASSED | set(settings.comfy_env)) - config.secret_variables()
    env = {
        k: v
        for k, v in environ.items()
        if (k in passed or k.startswith(_PASSED_PREFIXES)) and not _holds_secret(v, settings.secret_values)
    }
    env["HOME"] = home
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _holds_secret(value: str, secrets: frozenset[str]) -> bool:
    """The value is a secret, or holds one (a key with a newline, a list of keys, a URL with a
    password): a secret of 8 characters or more is looked for inside it."""
    stripped = value.strip()
    return any(stripped == s or (len(s) >= SECRET_INSIDE and s in value) for s in secrets)


def _home(settings: Settings, account: pwd.struct_passwd | None) -> str:
    """The user's own home when it owns it and can write there (not on a read-only image), else
    a folder of its own in the run dir."""
    try:
        entry = account or pwd.getpwuid(os.getuid())
    except KeyError:
        entry = None
    home = entry.pw_dir if entry else ""
    if home and os.path.isdir(home) and os.stat(home).st_uid == entry.pw_uid and os.access(home, os.W_OK):
        return home
    fallback = settings.comfy_folder("home")
    os.makedirs(fallback, mode=0o700, exist_ok=True)
    if account:
        os.chown(fallback, account.pw_uid, account.pw_gid)
    return fallback


def prepare_folders(settings: Settings, account: pwd.struct_passwd | None = None) -> str:
    """Empty the worker's input/output/temp folders (nothing of an earlier job survives a
    restart) and write the model paths yaml, all owned by ComfyUI's user; returns the yaml's
    path. The model folders are the entrypoint's to make: ComfyUI's user only reads them."""
    for kind in IO_FOLDERS:
        shutil.rmtree(settings.comfy_folder(kind), ignore_errors=True)
        os.makedirs(settings.comfy_folder(kind), mode=0o700)
    os.makedirs(settings.comfy_folder("user"), mode=0o700, exist_ok=True)
    path = settings.run_layout.model_paths(settings.comfy_program)
    nodes = preflight.place_node(settings) if settings.preflight else None
    yaml = model_folders.extra_model_paths_yaml(settings.model_dir, settings.baked_model_dir, nodes)
    _write_new(path, yaml.encode("utf-8"), 0o600)
    if account:
        for made in [*(settings.comfy_folder(kind) for kind in (*IO_FOLDERS, "user")), path]:
            os.chown(made, account.pw_uid, account.pw_gid, follow_symlinks=False)
    return path


def place_relay(settings: Settings) -> str:
    """A copy of the relay (standard library only) in ComfyUI's own folder: ComfyUI's user runs
    it and may not be able to enter the checkout."""
    target = settings.run_layout.relay(settings.comfy_program)
    with open(RELAY, "rb") as source:
        _write_new(target, source.read(), 0o644)
    return target


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Replace `path` with a new file: in a folder ComfyUI's user owns, a link it put there must
    not lead a write of this (root) process elsewhere."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def command(settings: Settings, yaml_path: str, gpu: bool) -> list[str]:
    argv = [
        settings.comfy_python,
        "-u",
        os.path.join(settings.comfyui_dir, "main.py"),
        "--listen",
        "127.0.0.1",
        "--port",
        str(settings.instance_port),
        "--disable-auto-launch",
        "--disable-metadata",
        "--input-directory",
        settings.comfy_folder("input"),
        "--output-directory",
        settings.comfy_folder("output"),
        "--temp-directory",
        settings.comfy_folder("temp"),
        "--user-directory",
        settings.comfy_folder("user"),
        "--database-url",
        "sqlite:///:memory:",  # nothing of a job in a file ComfyUI keeps
        "--extra-model-paths-config",
        yaml_path,
    ]
    if not gpu:
        argv.append("--cpu")
    return argv + shlex.split(settings.comfy_args)


def main() -> int:
    settings = config.load_or_exit("comfy")
    name = "comfy" if settings.log_format == "json" else settings.comfy_program  # json: + instance
    say = logs.sayer(name, settings.log_format, sys.stdout, settings.comfy_instance)
    main_py = os.path.join(settings.comfyui_dir, "main.py")
    if not os.path.isfile(main_py):
        say.error("comfy_init_failed: no ComfyUI at %s; set COMFYUI_DIR", main_py)
        return 1
    starts.count(settings.comfy_starts_file)
    with contextlib.suppress(FileNotFoundError):  # started again: no longer out for good
        os.remove(settings.run_layout.broken_marker(settings.comfy_program))
    account = comfy_account(settings)
    gpus = devices.of(settings)
    argv = command(settings, prepare_folders(settings, account), gpu=bool(gpus.ids))
    env = comfy_environment(dict(os.environ), settings, _home(settings, account))
    env.update(gpus.environment(settings.comfy_instance, settings.instance_count))
    device = gpus.describe(settings.comfy_instance)
    say.info("device: %s (COMFY_DEVICE=%s)", device, settings.comfy_device)
    say.info(
        "starting ComfyUI as %s: %s", account.pw_name if account else "the worker user", shlex.join(argv)
    )
    relay = [settings.comfy_python, place_relay(settings), "--comfy-url", settings.comfy_url]
    layout, program = settings.run_layout, settings.comfy_program
    relay += ["--tail", layout.boot_tail(program), "--ready", layout.ready_file(program)]
    relay += ["--cwd", settings.comfyui_dir]
    if settings.comfy_output_shown:
        relay.append("--show-after-boot")
    if settings.log_format == "json":
        relay += ["--json", str(settings.comfy_instance)]
    os.chdir(settings.comfy_io_dir)  # the checkout may be closed to ComfyUI's user
    if account:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    # from here on, no secret in this process: the relay and ComfyUI get only `env`
    os.execve(settings.comfy_python, [*relay, "--", *argv], env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())

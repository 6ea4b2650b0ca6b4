"""The container's entrypoint: check the configuration, then hand over to supervisord.

A bad value stops here, before any program starts, with a message that names the variable.
Then it becomes services.container.supervise, supervisord's parent for the container's life.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import logging
import os
import pwd
import secrets
import shutil
import socket
import sys
from typing import NoReturn

from services.comfy import account, devices, driver, install
from services.core import config, errors, logs
from services.jobs import envelopes
from services.jobs.access import Keys
from services.models import model_folders

log = logging.getLogger("entrypoint")  # its lines: services.core.logs.sayer, set up in main
HOME = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(HOME, "conf", "supervisord.conf")


def supervisord_environment(settings: config.Settings, environ: dict[str, str]) -> dict[str, str]:
    """The environment supervisord and its programs get: the caller's plus the conf's names."""
    env = {k: v for k, v in environ.items() if k != "COMFY_INSTANCE"}  # supervisord sets it per program
    env.update(
        LAUNCH_MODE=settings.launch_mode,
        RUN_DIR=settings.run_dir,
        COMFY_AUTOSTART="false" if settings.dry_run else "true",
        WORKER_HOME=HOME,
        WORKER_PYTHON=sys.executable,
        PYTHONUNBUFFERED="1",
        COMFY_USER=settings.comfy_user,  # as settled: the launcher runs ComfyUI as this user
        COMFY_INSTANCES=str(settings.instance_count),  # as settled: every program sees the number
        # LOG_FORMAT=json: supervisord prints nothing itself; the watchdog says its state changes
        SUPERVISORD_SILENT="true" if settings.log_format == "json" else "false",
    )
    if settings.private_key_b64:
        env["WORKER_PRIVATE_KEY_B64"] = settings.private_key_b64
    env.setdefault("RUNPOD_LOG_LEVEL", "ERROR" if settings.log_silent else "INFO")
    local_queue = settings.launch_mode == "serverless" and not settings.on_runpod
    env["LOCAL_QUEUE_AUTOSTART"] = "true" if local_queue else "false"
    if local_queue:
        env.update(local_runpod_environment(settings.api_port))
    return env


def local_runpod_environment(port: int) -> dict[str, str]:
    """What RunPod would hand the SDK worker, pointing at our local queue instead.

    The SDK's fitness checks dial a public address, so off RunPod they are turned off.
    """
    base = f"http://127.0.0.1:{port}/worker"
    return {
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=CPU",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=CPU",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=CPU",
        "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=CPU",
        "RUNPOD_AI_API_KEY": secrets.token_urlsafe(24),
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
    }


def ensure_dev_key(env_file: str, environ: dict[str, str]) -> dict[str, str]:
    """For `make run`: make a worker key on first start and keep it in an ignored local env file."""
    merged = {**config.read_env_file(env_file), **environ}
    wants_key = config.load_flag(merged, "ENCRYPTION_REQUIRED", default=True)
    if merged.get("WORKER_PRIVATE_KEY_B64") or not wants_key:
        return merged
    private, public = envelopes.keypair()
    with open(env_file, "a", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(f"WORKER_PRIVATE_KEY_B64={private}\n")
    log.info(f"made a worker key in {env_file}; public key: {public}")
    merged["WORKER_PRIVATE_KEY_B64"] = private
    return merged


def ensure_dev_comfyui(settings: config.Settings, environ: dict[str, str]) -> dict[str, str]:
    """For `make run`: with no COMFYUI_DIR and no ComfyUI in the image's place, install one."""
    if (
        settings.dry_run
        or "COMFYUI_DIR" in environ
        or os.path.isfile(os.path.join(settings.comfyui_dir, "main.py"))
    ):
        return environ
    comfy_dir = os.path.join(settings.comfyui_install_dir, "ComfyUI")
    python = install.ensure(
        settings.comfyui_source,
        settings.comfyui_ref,
        comfy_dir,
        os.path.join(settings.comfyui_install_dir, "venv"),
        settings.comfyui_lock,
    )
    return {**environ, "COMFYUI_DIR": comfy_dir, "COMFY_PYTHON": environ.get("COMFY_PYTHON", python)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env-file", help="local env file (values in the environment win)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    args = parser.parse_args(argv)

    environ = dict(os.environ)
    logs.sayer("entrypoint", config.log_format_of(environ))
    try:
        if args.env_file:
            environ = ensure_dev_key(args.env_file, environ)
        settings = config.load(environ)
        if args.env_file:
            environ = ensure_dev_comfyui(settings, environ)
            settings = config.load(environ)
        check_warmup(settings)
        Keys(settings)  # API_KEYS_FILE: a bad line stops the start, naming the line
    except config.ConfigError as exc:
        log.error(f"configuration error: {exc}")
        return 2
    except install.InstallError as exc:
        log.error(f"comfy_init_failed: {exc}")
        return 1
    if args.check:
        log.info(f"configuration ok: {config.describe(settings)}")
        return 0
    try:
        settings = settle_instances(settings)
        check_driver(settings, devices.of(settings))
        check_not_in_use(settings)
        check_shared_state(settings)
        settings = settle_comfy_user(settings)
        write_instance_programs(settings)
    except StartError as exc:
        log.error(str(exc))
        return 1
    return supervise(settings, supervisord_environment(settings, environ))


def check_warmup(settings: config.Settings) -> None:
    """WARMUP_WORKFLOW must be a workflow a job could send, checked before anything starts."""
    if settings.warmup_workflow is None:
        return
    from services.comfy.warmup import load  # here: the workflow checks bring gevent along

    try:
        load(settings.warmup_workflow)
    except errors.WorkerError as exc:
        raise config.ConfigError(f"WARMUP_WORKFLOW={settings.warmup_workflow}: {exc.detail}") from None


def check_driver(
    settings: config.Settings, gpus: devices.Gpus, proc_version: str = driver.PROC_VERSION
) -> None:
    """An NVIDIA driver too old for the CUDA build of ComfyUI's torch: one line, and the image
    stops (CUDA_DRIVER_REQUIRED) rather than crash-loop or run an hour on the CPU."""
    if settings.dry_run:
        return
    if gpus.vendor != "nvidia":
        log.info("no NVIDIA GPU: no driver to check")
        return
    verdict = driver.check(driver.host_driver(proc_version), driver.torch_cuda(settings.comfy_python))
    if not verdict.too_old:
        log.info(verdict.line)
    elif settings.cuda_driver_required:
        raise StartError(verdict.line)
    else:
        log.warning(f"warning: {verdict.line}")


class StartError(RuntimeError):
    """The container cannot run as it was started; the message says why and what to do."""


def check_shared_state(settings: config.Settings) -> None:
    """A fleet's Redis (STATE_URL) that does not answer stops the start: a pod that cannot reach
    it would accept no async job and guard no replay across the fleet."""
    if not settings.state_url:
        return
    from services.jobs.fleet.state_store import StateStore  # here: only a fleet's worker needs redis

    try:
        StateStore(settings).ping()
    except errors.StateUnavailable as exc:
        raise StartError(
            f"{exc.detail}; check STATE_URL (its value is not shown) and that Redis runs"
        ) from None


def check_not_in_use(settings: config.Settings) -> None:
    """Two workers on one host need their own RUN_DIR and ports: say which setting collides
    instead of letting supervisord or a program fail with a message that names neither."""
    pid = _read_int(settings.run_layout.supervisord_pid)
    if pid and _is_supervisord(pid):
        raise StartError(
            f"RUN_DIR={settings.run_dir} is in use by another worker (its supervisord has pid {pid}); "
            "give each worker on this host its own RUN_DIR (and API_PORT, COMFY_PORT)"
        )
    if settings.dry_run:
        return
    for number in range(settings.instance_count):
        port = settings.instance(number).instance_port
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                which = f"COMFY_PORT={port}" if number == 0 else f"port {port} (COMFY_PORT + {number})"
                raise StartError(
                    f"{which} is taken by another program (another worker's ComfyUI?); give each "
                    "worker on this host its own COMFY_PORT (and RUN_DIR, API_PORT); ComfyUI instance i "
                    "listens on COMFY_PORT + i"
                ) from None


def settle_instances(settings: config.Settings) -> config.Settings:
    """COMFY_INSTANCES as a number (`auto`: one per GPU this container can use), each instance
    and its device said once."""
    gpus = devices.of(settings)
    count = devices.instances(settings.comfy_instances, gpus)
    settings = dataclasses.replace(settings, comfy_instances=count)
    if not settings.dry_run:
        for number in range(count):
            log.info(
                f"ComfyUI instance {number} ({settings.instance(number).comfy_program}): "
                f"port {settings.instance(number).instance_port}, {gpus.describe(number)}"
            )
    return settings


def write_instance_programs(settings: config.Settings) -> None:
    """supervisord programs for instances 1.. (`comfy-1`, ...): copies of the conf's `comfy`
    program (which is instance 0) that tell the launcher their number. Written at every start,
    empty for a single instance, into the run folder the conf includes."""
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONF)
    program = dict(parser.items("program:comfy"))
    sections = []
    for number in range(1, settings.instance_count):
        lines = [f"[program:comfy-{number}]", *(f"{key}={value}" for key, value in program.items())]
        sections.append("\n".join([*lines, f'environment=COMFY_INSTANCE="{number}"', ""]))
    with open(settings.run_layout.instance_programs, "w", encoding="utf-8") as handle:
        handle.write("\n".join(sections))


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _is_supervisord(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"supervisord" in handle.read()
    except OSError:
        return False


def settle_comfy_user(settings: config.Settings) -> config.Settings:
    """Make the folders, with ComfyUI's own user settled: started as root, ComfyUI gets
    COMFY_USER, made when it does not exist, which must reach what ComfyUI needs. Where it
    cannot be had, one line says why and what to do; then the image (COMFY_USER_REQUIRED) stops,
    and elsewhere ComfyUI runs as root with prepare_folders' warning. The settings returned name
    the user ComfyUI runs as."""
    try:
        user: pwd.struct_passwd | None = pwd.getpwnam(settings.comfy_user)
    except KeyError:
        user = None
    if os.getuid() != 0 or settings.dry_run or (user is not None and user.pw_uid == 0):
        prepare_folders(settings)
        return settings
    try:
        if user is None:
            user = account.create(settings.comfy_user)
            log.info(
                f"made ComfyUI's user {user.pw_name!r} (uid {user.pw_uid}), a system user "
                "without a login shell"
            )
        prepare_folders(settings)
        blocked = account.unreachable(user, comfy_needs(settings))
        if blocked is None:
            warn_unread_models(settings, user)
            return settings
        problem = f"ComfyUI's user {user.pw_name!r} (uid {user.pw_uid}) cannot reach {blocked}"
    except account.AccountError as exc:
        problem = str(exc)
    line = (
        f"{problem}: make it readable for that user, use the image, or set COMFY_USER=root to let "
        "ComfyUI share the worker's user knowingly"
    )
    if settings.comfy_user_required:
        raise StartError(f"{line} (COMFY_USER_REQUIRED)")
    log.warning(line)
    settings = dataclasses.replace(settings, comfy_user="root")
    prepare_folders(settings)
    return settings


def comfy_needs(settings: config.Settings) -> list[tuple[str, int]]:
    """What ComfyUI's user must reach to run at all: its interpreter (through every link), its
    environment, ComfyUI's tree and its own folders in the run dir (the relay is copied there)."""
    readable = os.R_OK | os.X_OK
    return [
        (settings.comfy_python, os.X_OK),
        (os.path.dirname(os.path.dirname(settings.comfy_python)), readable),
        (settings.comfyui_dir, readable),
        (os.path.join(settings.comfyui_dir, "main.py"), os.R_OK),
        *((settings.instance(number).comfy_io_dir, readable) for number in range(settings.instance_count)),
    ]


def warn_unread_models(settings: config.Settings, user: pwd.struct_passwd) -> None:
    """Model folders ComfyUI's user cannot read: ComfyUI runs, but sees no model there (a volume
    mounted 0700, say). Said, not fatal: the folder is the operator's."""
    folders = [path for path in (settings.model_dir, settings.baked_model_dir) if path]
    blocked = account.unreachable(user, [(path, os.R_OK | os.X_OK) for path in folders])
    if blocked is not None:
        log.warning(
            f"warning: ComfyUI's user {user.pw_name!r} (uid {user.pw_uid}) cannot reach "
            f"{blocked}, so ComfyUI sees no model below it: make it readable for that user "
            f"(chmod o+rx {blocked})"
        )


def prepare_folders(settings: config.Settings) -> None:
    """Make the run folder and the model folders.

    Started as root, ComfyUI runs as COMFY_USER (the launcher drops to it): that user owns only
    its own folder in the run dir and can read but not change the model root, and it cannot
    read the memory or environment of the processes that hold the worker's key. Otherwise
    everything shares one user, which is said here once."""
    user = account.comfy_account(settings)
    _writable(settings.run_dir, "run folder (RUN_DIR)", mode=0o700)
    os.chmod(settings.run_dir, 0o711 if user else 0o700)
    owner = (user.pw_uid, user.pw_gid) if user else (os.getuid(), os.getgid())
    for number in range(settings.instance_count):
        io_dir = settings.instance(number).comfy_io_dir
        os.makedirs(io_dir, mode=0o700, exist_ok=True)
        os.chown(io_dir, *owner)
    if not user and not settings.dry_run:
        why = (
            "ComfyUI has no user of its own (COMFY_USER=root)"
            if os.getuid() == 0
            else f"the worker was not started as root but as uid {os.getuid()}"
        )
        log.warning(
            f"warning: {why}, so ComfyUI runs as the same user as the processes that "
            "hold the worker's key and tokens, and a custom node could read them"
        )
    try:
        _writable(settings.model_dir, "model root (COMFYUI_MODEL_DIR)", mode=0o755)
        for folders in model_folders.FOLDERS.values():
            for folder in folders:
                os.makedirs(os.path.join(settings.model_dir, folder), exist_ok=True)
    except StartError as exc:
        if settings.launch_mode == "api":  # the pod API writes downloads there
            raise
        log.warning(f"warning: {exc}")


def _writable(path: str, what: str, mode: int) -> None:
    """Make `path` and prove it can be written, or say who cannot write it and how to fix that."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise StartError(
            f"cannot write the {what} {path} as uid {os.getuid()}: {exc.strerror}. Run the "
            f"container as root (RunPod's volumes are owned by root) or give this user the "
            f"folder: chown -R {os.getuid()} {path}"
        ) from None


def supervise(settings: config.Settings, env: dict[str, str]) -> NoReturn:
    """Become services.container.supervise (same pid, a fraction of the memory), which runs supervisord
    for the container's life."""
    layout = settings.run_layout
    for leftover in (layout.fatal_marker, layout.drain_file):  # a previous run's
        if os.path.exists(leftover):
            os.remove(leftover)
    shutil.rmtree(layout.work_dir, ignore_errors=True)  # its pids mean other processes now
    log.info(f"starting supervisord: mode={settings.launch_mode} dry_run={settings.dry_run}")
    runner = (
        "services.container.supervisord_json" if settings.log_format == "json" else "supervisor.supervisord"
    )
    supervisord = [sys.executable, "-m", runner, "-c", CONF]
    command = [
        "-m",
        "services.container.supervise",
        layout.fatal_marker,
        settings.supervisor_socket,
        settings.run_dir,
        repr(settings.drain_timeout_s),
        settings.log_format,
        settings.api_keys_file or "",
        "--",
    ]
    os.execve(sys.executable, [sys.executable, *command, *supervisord], env)


if __name__ == "__main__":
    sys.exit(main())

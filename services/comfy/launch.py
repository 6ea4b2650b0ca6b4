"""supervisord's `comfy` program: prepare ComfyUI's folders and flags, then exec its main.py.

The exec keeps one pid, so supervisord's stop and restart reach ComfyUI itself. ComfyUI's output
goes through a small relay forked first: until ComfyUI answers for the first time everything it
prints is shown (an import error or a crash at boot carries no job data, and hiding it turns a
broken install into a silent crash loop) and its last lines are kept in RUN_DIR/BOOT_TAIL for
the entrypoint's last words; after that it is shown only when `comfy_output_shown` allows.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import urllib.request

from services import config, model_folders
from services.config import Settings

IO_FOLDERS = ("input", "output", "temp")
BOOT_TAIL = "comfy-boot.log"
# ComfyUI logs this right after its port opens and before it serves a request, so every line
# before it is boot output
READY_LINE = b"To see the GUI go to:"


def gpu_visible() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def io_dir(settings: Settings, kind: str) -> str:
    return os.path.join(settings.comfy_io_dir, kind)


def prepare_folders(settings: Settings) -> str:
    """Empty the worker's input/output/temp folders (nothing of an earlier job survives a
    restart) and write the model paths yaml; returns the yaml's path."""
    for kind in IO_FOLDERS:
        shutil.rmtree(io_dir(settings, kind), ignore_errors=True)
        os.makedirs(io_dir(settings, kind), mode=0o700)
    os.makedirs(settings.model_dir, exist_ok=True)
    for folders in model_folders.FOLDERS.values():
        for folder in folders:
            os.makedirs(os.path.join(settings.model_dir, folder), exist_ok=True)
    path = os.path.join(settings.run_dir, "extra_model_paths.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(model_folders.extra_model_paths_yaml(settings.model_dir))
    return path


def command(settings: Settings, yaml_path: str, gpu: bool) -> list[str]:
    argv = [
        settings.comfy_python,
        "-u",
        os.path.join(settings.comfyui_dir, "main.py"),
        "--listen",
        "127.0.0.1",
        "--port",
        str(settings.comfy_port),
        "--disable-auto-launch",
        "--disable-metadata",
        "--input-directory",
        io_dir(settings, "input"),
        "--output-directory",
        io_dir(settings, "output"),
        "--temp-directory",
        io_dir(settings, "temp"),
        "--extra-model-paths-config",
        yaml_path,
    ]
    if not gpu:
        argv.append("--cpu")
    return argv + shlex.split(settings.comfy_args)


def main() -> int:
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"[comfy] configuration error: {exc}", file=sys.stderr)
        return 2
    main_py = os.path.join(settings.comfyui_dir, "main.py")
    if not os.path.isfile(main_py):
        print(f"[comfy] comfy_init_failed: no ComfyUI at {main_py}; set COMFYUI_DIR", file=sys.stderr)
        return 1
    argv = command(settings, prepare_folders(settings), gpu_visible())
    print(f"[comfy] starting ComfyUI: {shlex.join(argv)}", flush=True)
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(write_end)
        relay(read_end, settings)
        os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.chdir(settings.comfyui_dir)
    os.execv(argv[0], argv)
    return 1  # not reached


def relay(pipe_fd: int, settings: Settings) -> None:
    """Copy ComfyUI's output to ours until its pipe closes (ComfyUI and whatever it started are
    gone). Its own session keeps it out of the group signals meant for ComfyUI, so no line of a
    dying ComfyUI is lost."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tail_path = os.path.join(settings.run_dir, BOOT_TAIL)
    answered = threading.Event()
    threading.Thread(target=_wait_until_answers, args=(settings, answered), daemon=True).start()
    tail: collections.deque[bytes] = collections.deque(maxlen=40)
    booting, show_after_boot = True, settings.comfy_output_shown

    def end_of_boot() -> None:
        with contextlib.suppress(OSError):
            os.remove(tail_path)
        if not show_after_boot:
            _write(
                b"[comfy] ComfyUI answers; its own output is not logged from now on "
                b"(LOG_SILENT or encryption; COMFY_LOG=1 shows it)\n"
            )

    with os.fdopen(pipe_fd, "rb") as pipe:
        for line in pipe:
            if booting and answered.is_set():  # it answered before printing READY_LINE
                booting = False
                end_of_boot()
            if booting:
                _write(line)
                tail.append(line)
                _keep_tail(tail_path, tail)
                if READY_LINE in line:
                    booting = False
                    end_of_boot()
            elif show_after_boot:
                _write(line)


def _wait_until_answers(settings: Settings, answered: threading.Event) -> None:
    """A fallback for a ComfyUI that does not print READY_LINE."""
    while not answered.is_set():
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{settings.comfy_url}/system_stats", timeout=1) as response,
        ):
            if response.status == 200:
                answered.set()
        time.sleep(0.25)


def _write(data: bytes) -> None:
    with contextlib.suppress(OSError):  # supervisord gone at shutdown: keep draining ComfyUI's pipe
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _keep_tail(path: str, tail: collections.deque[bytes]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.writelines(tail)


if __name__ == "__main__":
    sys.exit(main())

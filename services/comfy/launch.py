"""supervisord's `comfy` program: prepare ComfyUI's folders and flags, then exec its main.py.

The exec keeps one pid, so supervisord's stop and restart reach ComfyUI itself.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import sys

from services import config, model_folders
from services.config import Settings

IO_FOLDERS = ("input", "output", "temp")


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
    if not settings.comfy_output_shown:
        print(
            "[comfy] ComfyUI's own output is not logged (LOG_SILENT or encryption; COMFY_LOG=1 shows it)",
            flush=True,
        )
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.chdir(settings.comfyui_dir)
    os.execv(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())

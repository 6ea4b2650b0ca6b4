"""`make run` on a fresh machine: fetch ComfyUI at a pinned commit into an ignored folder.

Used only when COMFYUI_DIR is not set and the image's /opt/ComfyUI is absent. ComfyUI gets its
own virtual environment (its torch is large and must not share the worker's pins).
"""

from __future__ import annotations

import os
import subprocess
import sys

INSTALL_HINT = (
    "set COMFYUI_DIR to an existing ComfyUI checkout, or run with DRY_RUN=1 to try the worker without it"
)


class InstallError(RuntimeError):
    pass


def installed(install_dir: str) -> tuple[str, str]:
    """(ComfyUI folder, its Python) inside `install_dir`."""
    return os.path.join(install_dir, "ComfyUI"), os.path.join(install_dir, "venv", "bin", "python")


def ensure(install_dir: str, repo: str, ref: str) -> tuple[str, str]:
    comfy_dir, python = installed(install_dir)
    marker = os.path.join(install_dir, f".installed-{ref}")
    if os.path.exists(marker):
        return comfy_dir, python
    print(f"[install] fetching ComfyUI {ref} from {repo} into {install_dir}", flush=True)
    os.makedirs(install_dir, exist_ok=True)
    if not os.path.isdir(os.path.join(comfy_dir, ".git")):
        _run(["git", "clone", "--quiet", repo, comfy_dir], f"could not fetch ComfyUI from {repo}")
    _run(["git", "-C", comfy_dir, "checkout", "--quiet", ref], f"ComfyUI has no commit {ref}")
    if not os.path.exists(python):
        _run(
            [sys.executable, "-m", "venv", os.path.join(install_dir, "venv")],
            "could not create ComfyUI's venv",
        )
    requirements = os.path.join(comfy_dir, "requirements.txt")
    _run(
        [python, "-m", "pip", "install", "--quiet", "-r", requirements],
        "could not install ComfyUI's requirements",
    )
    open(marker, "w").close()
    return comfy_dir, python


def _run(command: list[str], failure: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InstallError(f"{failure} ({last[0]}); {INSTALL_HINT}")

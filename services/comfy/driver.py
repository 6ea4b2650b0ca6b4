"""Whether this host's NVIDIA driver runs the CUDA build of ComfyUI's torch, known before ComfyUI
starts: otherwise ComfyUI fails at its first CUDA call or quietly runs on the CPU.

The driver's version is read from /proc/driver/nvidia/version, or from `nvidia-smi` where only
that is there; torch's CUDA version from `torch/version.py` in ComfyUI's environment, without
importing torch (seconds and gigabytes).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

# The oldest driver of each CUDA major release that runs any toolkit of that release (minor
# version compatibility). Source: NVIDIA, "CUDA Compatibility", Minor Version Compatibility,
# Table 1 (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html): 13.x
# >= 580, 12.x >= 525, 11.x >= 450; the exact releases (525.60.13, 450.80.02) are the CUDA 12.0
# and 11.x release notes' and that page's note on Tesla Recommended Drivers.
MINIMUM_DRIVER = {13: (580,), 12: (525, 60, 13), 11: (450, 80, 2)}
PROC_VERSION = "/proc/driver/nvidia/version"
_KERNEL_MODULE = re.compile(r"Kernel Module(?: for [\w-]+)?\s+(\d+(?:\.\d+)+)")
_TORCH_CUDA = re.compile(r"^cuda\s*(?::[^=]*)?=\s*['\"](\d+\.\d+)['\"]", re.MULTILINE)


@dataclass(frozen=True)
class Check:
    driver: str | None  # the host's, None when it cannot be read
    torch_cuda: str | None  # what ComfyUI's torch was built for; None: unknown, or a CPU build
    too_old: bool
    line: str  # what the entrypoint says

    def view(self) -> dict:
        return {"driver": self.driver, "torch_cuda": self.torch_cuda, "driver_too_old": self.too_old}


def host_driver(proc_version: str = PROC_VERSION, nvidia_smi: str | None = None) -> str | None:
    """The loaded NVIDIA kernel module's version (550.127.05), or None."""
    try:
        with open(proc_version, encoding="utf-8", errors="replace") as handle:
            found = _KERNEL_MODULE.search(handle.read())
        if found:
            return found.group(1)
    except OSError:
        pass
    smi = nvidia_smi or shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        answer = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = answer.stdout.strip().splitlines()[0] if answer.returncode == 0 and answer.stdout.strip() else ""
    return first if re.fullmatch(r"\d+(?:\.\d+)+", first) else None


def torch_cuda(comfy_python: str) -> str | None:
    """The CUDA release ComfyUI's torch was built for ("13.0"), from its environment's files."""
    environment = os.path.dirname(os.path.dirname(comfy_python))
    for version_file in glob.glob(
        os.path.join(environment, "lib", "python3*", "site-packages", "torch", "version.py")
    ):
        try:
            with open(version_file, encoding="utf-8") as handle:
                found = _TORCH_CUDA.search(handle.read())
        except OSError:
            continue
        if found:
            return found.group(1)
    return None


def check(driver: str | None, cuda: str | None) -> Check:
    """The verdict for an NVIDIA host, and its one line."""
    if cuda is None:
        return Check(
            driver, cuda, False, "ComfyUI's torch has no CUDA build (or none was found): no driver to check"
        )
    if driver is None:
        return Check(
            driver,
            cuda,
            False,
            f"cannot read the NVIDIA driver's version; torch is built for CUDA {cuda}: not checked",
        )
    major = int(cuda.split(".")[0])
    needed = MINIMUM_DRIVER.get(major)
    have = tuple(int(part) for part in driver.split("."))
    if needed is None or have >= needed:
        return Check(driver, cuda, False, f"NVIDIA driver {driver} runs torch's CUDA {cuda}")
    least = ".".join(map(str, needed))
    return Check(
        driver,
        cuda,
        True,
        f"this image's torch is built for CUDA {cuda}, which needs NVIDIA driver >= {least}; this host "
        f"has {driver}: use the cuda12.8 image (TORCH_FLAVOR=cu128, tag -cu128) or a host with a newer driver",
    )

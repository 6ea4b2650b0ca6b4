"""The GPUs this container can use, and which one each ComfyUI instance gets.

A stock torch build sees NVIDIA GPUs through /dev/nvidiaN and AMD ones through ROCm's /dev/kfd
and the render nodes /dev/dri/renderD*; the usual variables narrow them. Instance i gets GPU
i (modulo their number) by the variable its runtime reads, which names the device as the
operator did (an index or a UUID), so a pinned list keeps its meaning.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.core.config import Settings

_NVIDIA_NODE = re.compile(r"nvidia\d+")
_VENDOR_VARIABLES = {
    "nvidia": ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"),
    "rocm": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
}


@dataclass(frozen=True)
class Gpus:
    vendor: str | None  # "nvidia", "rocm", or None: the CPU
    ids: tuple[str, ...] = ()  # each GPU as its runtime's *_VISIBLE_DEVICES names it

    def describe(self, instance: int) -> str:
        if not self.ids:
            return "cpu"
        return f"{self.vendor} GPU {self.ids[instance % len(self.ids)]}"

    def environment(self, instance: int, instances: int) -> dict[str, str]:
        """What pins `instance` to its GPU; nothing for a single instance (ComfyUI then sees
        every GPU it saw before) or on the CPU."""
        if instances < 2 or not self.ids:
            return {}
        pinned = self.ids[instance % len(self.ids)]
        if self.vendor == "nvidia":
            return {"CUDA_VISIBLE_DEVICES": pinned}
        return {"HIP_VISIBLE_DEVICES": pinned}


def of(settings: Settings) -> Gpus:
    """The GPUs ComfyUI gets: none with COMFY_DEVICE=cpu."""
    if settings.comfy_device == "cpu":
        return Gpus(None)
    return visible(dict(settings.gpu_visibility))


def visible(environ: Mapping[str, str], dev: str = "/dev") -> Gpus:
    nvidia = sorted(n for n in os.listdir(dev) if _NVIDIA_NODE.fullmatch(n)) if os.path.isdir(dev) else []
    if nvidia:
        return Gpus("nvidia", _narrowed(len(nvidia), environ, _VENDOR_VARIABLES["nvidia"]))
    render = glob.glob(os.path.join(dev, "dri", "renderD*"))
    if os.path.exists(os.path.join(dev, "kfd")) and render:
        return Gpus("rocm", _narrowed(len(render), environ, _VENDOR_VARIABLES["rocm"]))
    return Gpus(None)


def _narrowed(present: int, environ: Mapping[str, str], variables: tuple[str, str]) -> tuple[str, ...]:
    """The first variable set names the GPUs by the ids the runtime takes; the second narrows
    only their number (a container runtime's list, renumbered from 0 inside the container)."""
    runtime, outer = variables
    listed = _listed(environ.get(runtime))
    if listed is not None:
        return tuple(listed[:present])
    count = present
    outer_listed = _listed(environ.get(outer))
    if outer_listed is not None:
        count = min(count, len(outer_listed))
    return tuple(str(i) for i in range(count))


def _listed(raw: str | None) -> list[str] | None:
    """A *_VISIBLE_DEVICES value as a list; None when it does not narrow ('all', unset)."""
    if raw is None or raw.strip().lower() in ("", "all"):
        return None
    if raw.strip().lower() in ("none", "void", "-1"):
        return []
    return [item.strip() for item in raw.split(",") if item.strip()]


def instances(setting: int | None, gpus: Gpus) -> int:
    """COMFY_INSTANCES: a number as given; `auto` (None) one per GPU, one on the CPU."""
    if setting is not None:
        return setting
    return max(1, len(gpus.ids))

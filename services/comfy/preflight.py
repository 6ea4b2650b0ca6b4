"""The pre-flight: before a ComfyUI start takes jobs, a small computation on its device proves
the device works (`nodes/worker_preflight.py`, run as a prompt by services.comfy.warmup). The
node runs in ComfyUI's own environment and process, so what it proves holds for the jobs; with
`--cpu` it computes on the CPU. Turned off with PREFLIGHT=0."""

from __future__ import annotations

import os

from services.core.config import Settings

NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nodes", "worker_preflight.py")
CLASS = "WorkerPreflight"


def workflow(seed: int) -> dict:
    """The pre-flight prompt; `seed` (the start's number) gives each start inputs of its own."""
    return {"preflight": {"class_type": CLASS, "inputs": {"seed": seed}}}


def place_node(settings: Settings) -> str:
    """A copy of the node in a folder of the worker's that ComfyUI's user reads and cannot
    change (the checkout may be closed to it); returns the folder, a custom_nodes path."""
    folder = settings.run_layout.nodes(settings.comfy_program)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    os.chmod(folder, 0o755)
    target = os.path.join(folder, os.path.basename(NODE))
    with open(NODE, "rb") as source, open(target + ".new", "wb") as copy:
        copy.write(source.read())
    os.chmod(target + ".new", 0o644)
    os.replace(target + ".new", target)
    return folder

"""What a job is once its request was checked: the types every layer passes along (the pipeline,
the ComfyUI pool and executor, the warm-up), and the shape of an API-format workflow.

Dependency-free on purpose: it sits at the bottom, so ComfyUI's side can run a `JobRequest`
without knowing where it came from (a request, an envelope, the warm-up file).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from services.core import errors

Progress = Callable[[dict], None]  # a job's progress updates, as they happen

MAX_NODES = 10_000
_GRAPH_EXPORT_HINT = (
    "this is a UI graph export (it has 'nodes' and 'links'); in ComfyUI enable the dev mode "
    "options and use 'Export (API)' / 'Save (API Format)', then send that file as 'workflow'"
)


class Cancel(threading.Event):
    """A job's stop, and why: a caller's cancel (`set`: `interrupted`) or the drain's deadline
    (`stop(errors.ShuttingDown(...))`). Every wait of a job raises `error` once it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: errors.WorkerError = errors.Interrupted("the job was cancelled")

    def stop(self, error: errors.WorkerError) -> None:
        self.error = error
        self.set()


@dataclass
class Timing:
    """What the pool learnt of the job being answered in this context (its end line says it):
    which instance ran it, how long it waited for one and how long its ComfyUI took."""

    instance: int | None = None
    waited_s: float = 0.0
    ran_s: float = 0.0


TIMING: ContextVar[Timing | None] = ContextVar("timing", default=None)  # set by the pipeline


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tiff"),
    (b"MM\x00*", ".tiff"),
)


@dataclass(frozen=True)
class InputImage:
    name: str
    data: bytes

    @staticmethod
    def kind_of(data: bytes) -> str | None:
        """The image's file extension by its signature, or None for what is no image ComfyUI's
        LoadImage takes (it would otherwise fail late, inside the workflow)."""
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return ".webp"
        return next((ext for signature, ext in _SIGNATURES if data.startswith(signature)), None)


@dataclass(frozen=True)
class JobRequest:
    workflow: dict
    images: tuple[InputImage, ...]
    no_history: bool
    timeout_s: float
    output_format: str = "worker"
    # worker-comfyui's per-request key for ComfyUI's API nodes: handed to ComfyUI in the prompt's
    # extra_data (which ComfyUI keeps out of its history), never logged or echoed
    comfy_org_api_key: str | None = field(default=None, repr=False)
    # models to make sure of on the volume first (services.models.job_models checks each item)
    models: tuple[dict, ...] = field(default=(), repr=False)
    # a fleet's job: one that has not started in ComfyUI may go back to the fleet's queue
    elsewhere: bool = False
    # the name of the API key that sent it: waiting jobs take turns by key (services.comfy.pool)
    owner: str = "-"
    # called once, when its prompt leaves ComfyUI's queue (a fleet's job starts then, in Redis)
    on_start: Callable[[], None] | None = field(default=None, repr=False, compare=False)


def validate_workflow(workflow: Any) -> dict:
    if looks_like_graph_export(workflow):
        raise errors.InvalidWorkflow(_GRAPH_EXPORT_HINT)
    if not isinstance(workflow, dict):
        raise errors.InvalidWorkflow(f"'workflow' must be an object of nodes, got {kind(workflow)}")
    if not workflow:
        raise errors.InvalidWorkflow("'workflow' has no nodes")
    if len(workflow) > MAX_NODES:
        raise errors.InvalidWorkflow(f"'workflow' has {len(workflow)} nodes; the limit is {MAX_NODES}")
    for node_id, node in workflow.items():
        if not isinstance(node, dict):
            raise errors.InvalidWorkflow(f"node {short(node_id)} must be an object, got {kind(node)}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise errors.InvalidWorkflow(f"node {short(node_id)} has no 'class_type'")
        if not isinstance(node.get("inputs", {}), dict):
            raise errors.InvalidWorkflow(
                f"node {short(node_id)} ('{short(class_type)}'): 'inputs' must be an object"
            )
    return workflow


def looks_like_graph_export(value: Any) -> bool:
    return isinstance(value, dict) and "nodes" in value and "links" in value


def kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def short(text: Any) -> str:
    text = str(text)
    return text if len(text) <= 40 else text[:37] + "..."

"""A template as it serves: an exported workflow and its typed parameters, each resolved to the
node inputs it fills (services.jobs.templates.loading makes one from its folder)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from services.core.job_spec import InputImage
from services.core.offload import offload

KINDS = ("string", "integer", "number", "boolean", "enum", "image", "seed")
LIVE = "object_info"  # `values` of an enum: the list ComfyUI offers for that input, read live
SEED_MAX = 2**53 - 1


class TemplateLoadError(ValueError):
    """Why one template cannot serve: the message names the template, the parameter, the target."""


@dataclass(frozen=True)
class Target:
    node_id: str
    input: str


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    targets: tuple[Target, ...]
    description: str = ""
    default: Any = None  # None: a seed is drawn; an image has none (the call must send one)
    minimum: float | None = None  # integer, number: value bounds; string: length bounds
    maximum: float | None = None
    values: tuple | None = None  # enum: fixed values, or None with `live`
    live: bool = False  # enum: ComfyUI's own list for the first target's input

    @property
    def required(self) -> bool:
        return self.kind == "image"


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    workflow: dict
    params: dict[str, Param]
    class_of: dict[str, str] = field(default_factory=dict, repr=False)  # node id -> class_type

    def filled(self, given: dict, images: list[tuple[str, InputImage]]) -> tuple[dict, dict]:
        """(the values used, the workflow with them set, seeds drawn; an image parameter's value
        is its input image's name). Only the nodes a parameter fills are copied."""
        used: dict[str, Any] = {}
        workflow = dict(self.workflow)
        for name, param in self.params.items():
            value = given.get(name, param.default)
            if param.kind == "seed" and (value is None or value == "random"):
                low = int(param.minimum or 0)
                value = low + secrets.randbelow(int(param.maximum or SEED_MAX) - low + 1)
            used[name] = value
            for target in param.targets:
                node = workflow[target.node_id]
                if node is self.workflow[target.node_id]:
                    node = workflow[target.node_id] = {**node, "inputs": dict(node["inputs"])}
                node["inputs"][target.input] = value
        for name, image in images:
            for target in self.params[name].targets:
                workflow[target.node_id]["inputs"][target.input] = image.name
            given_value = given[name]
            used[name] = (
                given_value
                if isinstance(given_value, str) and given_value.startswith(("http://", "https://"))
                else {"bytes": len(image.data), "sha256": offload(_sha256, image.data, size=len(image.data))}
            )
        return used, workflow

    def filled_by(self) -> dict[tuple[str, str], str]:
        """(node id, input) -> the parameter that fills it."""
        return {(t.node_id, t.input): p.name for p in self.params.values() for t in p.targets}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

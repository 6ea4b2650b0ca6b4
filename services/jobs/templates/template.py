"""A template as it serves: an exported workflow and its typed parameters, each resolved to the
node inputs it fills (services.jobs.templates.loading makes one from its folder)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def filled_by(self) -> dict[tuple[str, str], str]:
        """(node id, input) -> the parameter that fills it."""
        return {(t.node_id, t.input): p.name for p in self.params.values() for t in p.targets}

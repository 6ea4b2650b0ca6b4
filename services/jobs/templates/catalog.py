"""What ComfyUI declares of its nodes' inputs (`/object_info/<class>`), for the templates.

Each node class is asked once and kept; `refresh` asks again, so a list ComfyUI builds from the
volume (checkpoints, LoRAs, input images) takes a file placed there after start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Catalog:
    def __init__(self, node_info: Callable[[str], dict]) -> None:
        """`node_info`: ComfyUI's `/object_info/<class>` answer for one class ({} if unknown)."""
        self._node_info = node_info
        self._nodes: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _inputs(self, class_type: str) -> dict:
        with self._lock:
            known = self._nodes.get(class_type)
        if known is None:
            known = self.refresh(class_type)
        return known

    def refresh(self, class_type: str) -> dict:
        info = self._node_info(class_type)
        inputs: dict = {}
        for group in ("required", "optional"):
            declared = (info.get("input") or {}).get(group) or {}
            if isinstance(declared, dict):
                inputs.update(declared)
        with self._lock:
            self._nodes[class_type] = inputs
        return inputs

    def knows(self, class_type: str) -> bool:
        return bool(self._inputs(class_type))

    def input_spec(self, class_type: str, name: str) -> tuple[Any, dict] | None:
        """(ComfyUI's type or list of choices, its options), or None when the input is unknown."""
        spec = self._inputs(class_type).get(name)
        if not isinstance(spec, list | tuple) or not spec:
            return None
        kind, options = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if kind == "COMBO":  # the newer node API's combo: the choices are under `options`
            kind = list(options.get("options") or [])
        return kind, options

    def choices(self, class_type: str, name: str, fresh: bool = False) -> list:
        """The values ComfyUI offers for a list input; `fresh`: ask ComfyUI again first."""
        if fresh:
            self.refresh(class_type)
        spec = self.input_spec(class_type, name)
        return list(spec[0]) if spec and isinstance(spec[0], list) else []

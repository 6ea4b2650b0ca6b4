"""Workflow templates: an exported workflow plus a small declarative map of typed parameters.

    TEMPLATES_DIR/<name>/workflow.json   ComfyUI's "Export (API)" output, unchanged
    TEMPLATES_DIR/<name>/template.json   {description, params: {name: {type, targets, ...}}}

Loading resolves every target (a node by its title, `_meta.title`, which survives a re-export;
else by its id) to a node id once, and refuses a template whose target matches no node, several
(unless it says `all`), an input the node does not have or one that holds a link. Checked against
ComfyUI's `/object_info` (services.jobs.template_catalog) a template is refused too when it names
a node class ComfyUI lacks, widens a bound ComfyUI declares, or lists values ComfyUI refuses.
A refused template never stops the others: the registry serves the good ones and names the
rejected ones with their reason. What a call sends is checked in services.jobs.template_params.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema

from services.core import errors
from services.core.job_spec import validate_workflow
from services.jobs.template_catalog import Catalog

log = logging.getLogger("worker.templates")

KINDS = ("string", "integer", "number", "boolean", "enum", "image", "seed")
LIVE = "object_info"  # `values` of an enum: the list ComfyUI offers for that input, read live
SEED_MAX = 2**53 - 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_BOUNDS = {"integer": ("min", "max"), "number": ("min", "max"), "string": ("min_length", "max_length")}
_KEYS = {
    "type",
    "targets",
    "description",
    "default",
    "values",
    *(k for pair in _BOUNDS.values() for k in pair),
}


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


def load(folder: str) -> Template:
    """One template from its folder, structurally checked (no ComfyUI needed)."""
    name = os.path.basename(os.path.normpath(folder))
    if not _NAME.match(name):
        raise TemplateLoadError(f"{name!r}: a template's folder name must match {_NAME.pattern}")
    spec = _read_json(folder, "template.json", name)
    workflow = _read_json(folder, "workflow.json", name)
    try:
        validate_workflow(workflow)
    except errors.WorkerError as exc:
        raise TemplateLoadError(f"{name}: workflow.json: {exc.detail}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict) or not spec["params"]:
        raise TemplateLoadError(f"{name}: template.json must be an object with 'params', a non-empty object")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise TemplateLoadError(f"{name}: 'description' must be a string")
    params = {key: _param(name, key, value, workflow) for key, value in spec["params"].items()}
    class_of = {node_id: node["class_type"] for node_id, node in workflow.items()}
    template = Template(name, description, workflow, params, class_of)
    _check_defaults(template)
    return template


def _read_json(folder: str, file: str, name: str) -> Any:
    try:
        with open(os.path.join(folder, file), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise TemplateLoadError(f"{name}: {file} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TemplateLoadError(f"{name}: {file} is not readable JSON ({exc})") from None


def _param(template: str, name: str, spec: Any, workflow: dict) -> Param:
    where = f"{template}: parameter {name!r}"
    if not _PARAM.match(name):
        raise TemplateLoadError(f"{where}: a parameter name must match {_PARAM.pattern}")
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise TemplateLoadError(f"{where}: 'type' must be one of {', '.join(KINDS)}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise TemplateLoadError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kind = spec["type"]
    targets = _targets(where, spec.get("targets"), workflow)
    low, high = _bounds(where, kind, spec)
    values, live = _values(where, kind, spec.get("values"))
    first = targets[0]
    default = spec["default"] if "default" in spec else workflow[first.node_id]["inputs"][first.input]
    if kind == "seed" and "default" not in spec:
        default = None  # absent means a fresh seed per call, whatever the export holds
    if kind == "image":
        default = None
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise TemplateLoadError(f"{where}: 'description' must be a string")
    return Param(name, kind, targets, description, default, low, high, values, live)


def _targets(where: str, spec: Any, workflow: dict) -> tuple[Target, ...]:
    if not isinstance(spec, list) or not spec:
        raise TemplateLoadError(f"{where}: 'targets' must be a non-empty list of {{node, input}}")
    found: list[Target] = []
    for target in spec:
        if not isinstance(target, dict) or not isinstance(target.get("node"), str | int):
            raise TemplateLoadError(f"{where}: each target is {{node: title or id, input, all?}}")
        node, wanted = str(target["node"]), target.get("input")
        label = f"{where}, target {node!r}.{wanted}"
        titled = [nid for nid, n in workflow.items() if (n.get("_meta") or {}).get("title") == node]
        matches = titled or ([node] if node in workflow else [])
        if not matches:
            raise TemplateLoadError(f"{label}: no node has this title or id")
        if len(matches) > 1 and target.get("all") is not True:
            raise TemplateLoadError(
                f"{label}: {len(matches)} nodes have this title (nodes {', '.join(matches)}); "
                'set "all": true to fill every one'
            )
        for node_id in matches:
            inputs = workflow[node_id].get("inputs", {})
            if not isinstance(wanted, str) or wanted not in inputs:
                raise TemplateLoadError(
                    f"{label}: node {node_id} ({workflow[node_id]['class_type']}) has no input {wanted!r}"
                )
            if _is_link(inputs[wanted]):
                raise TemplateLoadError(
                    f"{label}: input {wanted!r} of node {node_id} is linked to another node, not a value"
                )
            found.append(Target(node_id, wanted))
    return tuple(found)


def _bounds(where: str, kind: str, spec: dict) -> tuple[float | None, float | None]:
    keys = _BOUNDS.get(kind, ())
    for key in ("min", "max", "min_length", "max_length"):
        if key in spec and key not in keys:
            raise TemplateLoadError(f"{where}: {key!r} does not apply to type {kind}")
    bounds = [spec.get(key) for key in keys] or [None, None]
    for key, value in zip(keys, bounds, strict=False):
        number = int | float if kind == "number" else int
        if value is not None and (isinstance(value, bool) or not isinstance(value, number)):
            raise TemplateLoadError(f"{where}: {key!r} must be a number")
    if None not in bounds and bounds[0] > bounds[1]:
        raise TemplateLoadError(f"{where}: {keys[0]} {bounds[0]} is above {keys[1]} {bounds[1]}")
    return bounds[0], bounds[1]


def _values(where: str, kind: str, values: Any) -> tuple[tuple | None, bool]:
    if kind != "enum":
        if values is not None:
            raise TemplateLoadError(f"{where}: 'values' applies to type enum only")
        return None, False
    if values == LIVE:
        return None, True
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str | int | float) for v in values)
    ):
        raise TemplateLoadError(f"{where}: 'values' must be a non-empty list, or \"{LIVE}\"")
    return tuple(values), False


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def check(template: Template, catalog: Catalog) -> Template:
    """The template against ComfyUI's declared inputs: the same template with ComfyUI's bounds
    applied (a template may only narrow them), or the reason it cannot serve."""
    params = {}
    for param in template.params.values():
        for target in param.targets:
            if catalog.input_spec(template.class_of[target.node_id], target.input) is None:
                raise TemplateLoadError(
                    f"{template.name}: parameter {param.name!r}, node {target.node_id}: ComfyUI's "
                    f"{template.class_of[target.node_id]} has no input {target.input!r}"
                    + ("" if catalog.knows(template.class_of[target.node_id]) else " (unknown node class)")
                )
        params[param.name] = _narrowed(template, param, catalog)
    checked = replace(template, params=params)
    _check_defaults(checked, catalog)
    return checked


def _narrowed(template: Template, param: Param, catalog: Catalog) -> Param:
    where = f"{template.name}: parameter {param.name!r}"
    low, high = param.minimum, param.maximum
    for target in param.targets:
        comfy_type, options = catalog.input_spec(template.class_of[target.node_id], target.input)
        at = f"{template.class_of[target.node_id]}.{target.input}"
        if param.kind in ("integer", "number", "seed"):
            if comfy_type not in ("INT", "FLOAT"):
                raise TemplateLoadError(f"{where}: {at} takes {_kind(comfy_type)}, not a number")
            if param.kind != "number" and comfy_type == "FLOAT":
                raise TemplateLoadError(f"{where}: {at} takes a FLOAT; use type number")
            low = _tighter(where, "min", low, options.get("min"), at, max)
            high = _tighter(where, "max", high, options.get("max"), at, min)
        elif param.kind == "boolean" and comfy_type != "BOOLEAN":
            raise TemplateLoadError(f"{where}: {at} takes {_kind(comfy_type)}, not a boolean")
        elif param.kind == "enum":
            if not isinstance(comfy_type, list):
                raise TemplateLoadError(f"{where}: {at} takes {_kind(comfy_type)}, not one of a list")
            refused = [v for v in param.values or () if v not in comfy_type]
            if refused:
                raise TemplateLoadError(f"{where}: ComfyUI's {at} does not offer {refused}")
    if param.kind == "seed":
        high = SEED_MAX if high is None else min(high, SEED_MAX)
    return replace(param, minimum=low, maximum=high)


def _tighter(where: str, key: str, own: float | None, comfy: Any, at: str, pick: Callable) -> float | None:
    if not isinstance(comfy, int | float) or isinstance(comfy, bool):
        return own
    if own is None:
        return comfy
    if pick(own, comfy) != own:
        raise TemplateLoadError(f"{where}: {key} {own} is outside ComfyUI's {key} {comfy} of {at}")
    return own


def _kind(comfy_type: Any) -> str:
    return "one of a list" if isinstance(comfy_type, list) else str(comfy_type)


# --- the JSON Schema of a call's parameters (validation and the OpenAPI document) ---------------
DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
    {  # an integer is an int (1.0 is not), a number is finite, neither is a boolean
        "integer": lambda _checker, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _checker, v: (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ),
    }
)
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


def schema(template: Template, catalog: Catalog | None = None, fresh: bool = False) -> dict:
    """The body of a call: one property per parameter, nothing else. A live enum lists what
    ComfyUI offers now (`fresh`: asked again); without a catalog it is any string."""
    properties = {name: _property(template, param, catalog, fresh) for name, param in template.params.items()}
    return {
        "$schema": DIALECT,
        "title": template.name,
        "description": template.description,
        "type": "object",
        "properties": properties,
        "required": [name for name, param in template.params.items() if param.required],
        "additionalProperties": False,
    }


def _property(template: Template, param: Param, catalog: Catalog | None, fresh: bool) -> dict:
    low, high = param.minimum, param.maximum
    if param.kind in ("integer", "number"):
        prop: dict = {"type": param.kind, **_limits("minimum", low, "maximum", high)}
    elif param.kind == "string":
        prop = {"type": "string", **_limits("minLength", low, "maxLength", high)}
    elif param.kind == "boolean":
        prop = {"type": "boolean"}
    elif param.kind == "enum":
        values = param.values
        if param.live and catalog is not None:
            first = param.targets[0]
            values = tuple(catalog.choices(template.class_of[first.node_id], first.input, fresh))
        prop = {"enum": list(values)} if values is not None else {"type": "string"}
    elif param.kind == "image":
        prop = {"type": "string", "minLength": 1, "description": "base64, a data URI or an http(s) URL"}
    else:
        seed = {
            "type": "integer",
            **_limits("minimum", 0 if low is None else low, "maximum", high or SEED_MAX),
        }
        prop = {"anyOf": [seed, {"const": "random"}], "description": 'absent or "random": drawn anew'}
    if param.description:
        prop["description"] = param.description
    if param.default is not None:
        prop["default"] = param.default
    return prop


def _limits(low_key: str, low: float | None, high_key: str, high: float | None) -> dict:
    return {k: v for k, v in ((low_key, low), (high_key, high)) if v is not None}


def defaults(template: Template) -> dict:
    """What a call that leaves a parameter out gets (a seed is drawn anew each call)."""
    return {name: p.default for name, p in template.params.items() if p.default is not None}


def example(template: Template) -> dict:
    """A body that runs as it is: the defaults, a drawn seed, a small grey PNG for each image."""
    body: dict[str, Any] = defaults(template)
    for name, param in template.params.items():
        if param.kind == "seed" and param.default is None:
            body[name] = "random"
        elif param.kind == "image":
            body[name] = EXAMPLE_PNG
    return body


def _png(side: int, grey: int) -> str:
    """A `side` x `side` grey PNG as base64, made here so the example needs no file."""
    rows = b"".join(b"\x00" + bytes([grey]) * side for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


EXAMPLE_PNG = _png(32, 128)


def _check_defaults(template: Template, catalog: Catalog | None = None) -> None:
    """A default the template's own schema refuses (a bound it narrowed, a value not listed). A
    live list's default is not held to today's list: the file may come later."""
    given = {n: p.default for n, p in template.params.items() if p.default is not None and not p.live}
    validator = Validator(schema(template, catalog) | {"required": []})
    for problem in validator.iter_errors(given):
        name = problem.absolute_path[0] if problem.absolute_path else "?"
        raise TemplateLoadError(
            f"{template.name}: parameter {name!r}: its default {given.get(name)!r} breaks {problem.validator}"
        )


class Templates:
    """The templates of TEMPLATES_DIR: loaded at start, checked against ComfyUI once it answers
    (`check_with` runs in the background), served by name."""

    def __init__(self, folders: tuple[str, ...], catalog: Catalog | None) -> None:
        """`catalog`: ComfyUI's `/object_info` (None under DRY_RUN: the structural checks only)."""
        self.catalog = catalog
        self._loaded: dict[str, Template] = {}
        self._rejected: dict[str, str] = {}
        self._checked = threading.Event()
        self._validators: dict[str, tuple[Template, Any]] = {}  # compiled for that very template
        self._lock = threading.Lock()  # the check runs in the background while calls read
        for folder in folders:
            for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
                path = os.path.join(folder, entry)
                if os.path.isdir(path) and entry not in self._loaded and entry not in self._rejected:
                    self._load(path, entry)
        if catalog is None or not self._loaded:
            self._checked.set()

    def _load(self, path: str, entry: str) -> None:
        try:
            self._loaded[entry] = load(path)
        except TemplateLoadError as exc:
            self._reject(entry, str(exc))

    def _reject(self, name: str, reason: str) -> None:
        self._loaded.pop(name, None)
        self._rejected[name] = reason
        log.warning("template rejected: %s", reason)

    def check_with_comfyui(self, answers: Callable[[], bool]) -> None:
        """One round of the check against ComfyUI's inputs (a background loop repeats it until
        it went through): `answers` waits for ComfyUI; one that goes away mid-way is asked again."""
        if self.catalog is None or not answers():
            return
        with self._lock:
            loaded = list(self._loaded.items())
        try:
            checked = {name: self._checked_one(template) for name, template in loaded}
        except errors.WorkerError:
            time.sleep(1.0)
            return
        with self._lock:
            for name, result in checked.items():
                if isinstance(result, Template):
                    self._loaded[name] = result
                else:
                    self._reject(name, result)
        self._checked.set()
        log.info(
            "templates checked against ComfyUI: %d serve, %d rejected", len(self._loaded), len(self._rejected)
        )

    def _checked_one(self, template: Template) -> Template | str:
        try:
            return check(template, self.catalog)
        except TemplateLoadError as exc:
            return str(exc)

    @property
    def checked(self) -> bool:
        return self._checked.is_set()

    def get(self, name: Any, wait_s: float = 0.0) -> Template:
        """A template that serves; `wait_s`: how long a call waits for the check against ComfyUI."""
        if isinstance(name, str) and name in self._loaded:
            self._checked.wait(wait_s)
        with self._lock:
            template = self._loaded.get(name) if isinstance(name, str) else None
            reason = self._rejected.get(name) if isinstance(name, str) else None
        if template is None:
            raise errors.UnknownTemplate(
                f"template {name!r} was rejected: {reason}" if reason else f"no template {str(name)[:80]!r}"
            )
        return template

    def validator(self, template: Template, fresh: bool = False) -> Any:
        """The template's schema, compiled once; `fresh`: with ComfyUI's live lists asked again.
        One compiled for the template as it was before the check is not used for the checked one."""
        with self._lock:
            cached = self._validators.get(template.name)
        if not fresh and cached is not None and cached[0] is template:
            return cached[1]
        compiled = Validator(schema(template, self.catalog, fresh))
        with self._lock:
            self._validators[template.name] = (template, compiled)
        return compiled

    def schema(self, template: Template) -> dict:
        """The template's schema as calls are checked now: with ComfyUI's lists once checked."""
        return schema(template, self.catalog if self.checked else None)

    def serving(self) -> list[Template]:
        with self._lock:
            return [self._loaded[name] for name in sorted(self._loaded)]

    def view(self) -> dict:
        """For /healthz: what serves and what was rejected, with why."""
        with self._lock:
            serving, rejected = sorted(self._loaded), sorted(self._rejected.items())
        return {
            "serving": serving,
            "rejected": [{"name": n, "reason": r} for n, r in rejected],
            "checked_with_comfyui": self._checked.is_set() and self.catalog is not None,
        }

"""A template loaded from its folder and checked, first on its own, then against ComfyUI.

    TEMPLATES_DIR/<name>/workflow.json   ComfyUI's "Export (API)" output, unchanged
    TEMPLATES_DIR/<name>/template.json   {description, params: {name: {type, targets, ...}}}

Loading resolves every target (a node by its title, `_meta.title`, which survives a re-export;
else by its id) to a node id once, and refuses a template whose target matches no node, several
(unless it says `all`), an input the node does not have or one that holds a link. Checked against
ComfyUI's `/object_info` (catalog) a template is refused too when it names a node class ComfyUI
lacks, widens a bound ComfyUI declares, or lists values ComfyUI refuses.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from services.core import errors
from services.core.job_spec import validate_workflow
from services.core.schema_check import Validator
from services.jobs.templates.call_schema import schema
from services.jobs.templates.catalog import Catalog
from services.jobs.templates.template import (
    KINDS,
    LIVE,
    SEED_MAX,
    Param,
    Target,
    Template,
    TemplateLoadError,
)

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

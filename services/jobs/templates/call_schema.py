"""The JSON Schema of a template call's parameters: what a call is checked against, and what the
OpenAPI document and `GET /templates/<name>` show; with an example body that runs as it is."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

from services.core.schema_check import DIALECT
from services.jobs.templates.catalog import Catalog
from services.jobs.templates.template import SEED_MAX, Param, Template

_MESSAGES = {
    "minimum": "must be at least {}",
    "maximum": "must be at most {}",
    "minLength": "must have at least {} characters",
    "maxLength": "must have at most {} characters",
}
_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
}


def problems(template: Template, sent: dict, validator: Callable[[bool], Any]) -> list[dict]:
    """Every problem of a call's parameters, in words of our own; `validator(fresh)`: the
    template's compiled schema (fresh: ComfyUI's live lists asked again, for a value one may
    have gained since). An envelope v2's attachment (bytes) fits an image parameter only."""
    misplaced = [
        n
        for n, v in sent.items()
        if isinstance(v, bytes) and n in template.params and template.params[n].kind != "image"
    ]
    given = {k: "attachment" if isinstance(v, bytes) else v for k, v in sent.items() if k not in misplaced}
    found = list(validator(False).iter_errors(given))
    live = {n for n, p in template.params.items() if p.live}
    if any(p.validator == "enum" and _param_of(p) in live for p in found):
        found = list(validator(True).iter_errors(given))  # a new file?
    details = [_detail(n, "type", "takes no attachment (only an image parameter does)") for n in misplaced]
    for problem in found:
        if problem.validator == "additionalProperties":
            known = ", ".join(template.params)
            details += [
                _detail(k, "unknown", f"no such parameter (known: {known})")
                for k in given
                if k not in template.params
            ]
        elif problem.validator == "required":
            details += [
                _detail(n, "required", "is required") for n in problem.validator_value if n not in sent
            ]
        else:
            details.append(_detail(_param_of(problem), problem.validator, _message(problem)))
    return details


def _param_of(problem: Any) -> str | None:
    return str(problem.absolute_path[0]) if problem.absolute_path else None


def _message(problem: Any) -> str:
    """Words of our own: jsonschema's repeat the value, which may be a user's private prompt."""
    rule, expected = problem.validator, problem.validator_value
    if rule in _MESSAGES:
        return _MESSAGES[rule].format(expected)
    if rule == "type":
        return f"must be {_TYPE_WORDS.get(expected, expected)}"
    if rule == "enum":
        shown = ", ".join(repr(v) for v in expected[:20]) + (", ..." if len(expected) > 20 else "")
        return f"must be one of {shown}"
    if rule == "anyOf":  # the seed
        top = problem.schema["anyOf"][0]
        return f'must be an integer from {top.get("minimum", 0)} to {top["maximum"]}, or "random"'
    return f"breaks {rule}"


def _detail(param: str | None, rule: str, message: str) -> dict:
    return {"param": param, "rule": rule, "message": message}


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

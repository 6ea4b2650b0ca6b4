"""A template call: `{"template": name, "params": {...}}` (plus the usual job options) becomes a
finished job in one pass.

    params -> the template's JSON Schema (every problem collected) -> image parameters
    (services.jobs.input_images) -> defaults filled, seeds drawn -> the workflow with the values
    set, and the call's options -> a `JobRequest`

The values used (the drawn seed too) go back with the result, so a call can be repeated exactly.
ComfyUI's node errors on an input a parameter filled are told back under that parameter's name.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.core import errors
from services.core.job_spec import InputImage, JobRequest
from services.core.offload import offload
from services.jobs import input_images
from services.jobs.templates.registry import Templates
from services.jobs.templates.template import SEED_MAX, Template

Options = Callable[[dict], dict]  # a job's options as JobRequest fields (services.jobs.job_request)

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


def is_call(payload: Any) -> bool:
    return isinstance(payload, dict) and "template" in payload


@dataclass(frozen=True)
class Call:
    template: Template
    job: JobRequest  # the filled workflow, the image parameters as its input images, its options
    used: dict  # the values the job ran with, seeds included

    def explain(self, exc: errors.WorkflowValidationFailed) -> errors.WorkerError:
        """ComfyUI's refusal told by parameter where a parameter filled the input it names."""
        filled = self.template.filled_by()
        details = []
        for node_id, problem in _node_problems(exc.node_errors):
            name = filled.get((node_id, (problem.get("extra_info") or {}).get("input_name")))
            if name is not None:
                text, more = problem.get("message", "refused"), problem.get("details")
                details.append(
                    {"param": name, "rule": "comfyui", "message": f"{text}: {more}" if more else text}
                )
        if details:
            return errors.InvalidParams(self.template.name, details)
        return errors.TemplateError(self.template.name, exc.detail, exc.node_errors)


def _node_problems(node_errors: dict) -> list[tuple[str, dict]]:
    """(node id, error) for each error of ComfyUI's `node_errors`, skipping what is malformed."""
    found = []
    for node_id, entry in node_errors.items():
        problems = entry.get("errors") if isinstance(entry, dict) else None
        found += [(node_id, p) for p in problems or [] if isinstance(p, dict)]
    return found


def prepare(
    templates: Templates, payload: dict, options: Options, fetch: input_images.Fetch, wait_s: float
) -> Call:
    """The call's job, or `unknown_template` / `invalid_params` naming every bad field (or the
    error of a bad option); `wait_s`: how long it waits for the check against ComfyUI."""
    clash = sorted(k for k in ("workflow", "images") if k in payload)
    if clash:
        raise errors.InvalidRequest(f"a template call sends 'params', not {' or '.join(clash)}")
    template = templates.get(payload["template"], wait_s)
    given = payload.get("params", {})
    if not isinstance(given, dict):
        raise errors.InvalidParams(template.name, [_detail(None, "type", "'params' must be an object")])
    details = _schema_problems(templates, template, given)
    images = _images(template, given, fetch, details) if not details else ()
    if details:
        raise errors.InvalidParams(template.name, details)
    used, workflow = _filled(template, given, images)
    job = JobRequest(workflow=workflow, images=tuple(i for _, i in images), **options(payload))
    return Call(template, job, used)


def _schema_problems(templates: Templates, template: Template, sent: dict) -> list[dict]:
    """Every problem of the call's parameters; an envelope v2's attachment (bytes) fits an
    image parameter only."""
    misplaced = [
        n
        for n, v in sent.items()
        if isinstance(v, bytes) and n in template.params and template.params[n].kind != "image"
    ]
    given = {k: "attachment" if isinstance(v, bytes) else v for k, v in sent.items() if k not in misplaced}
    problems = list(templates.validator(template).iter_errors(given))
    live = {n for n, p in template.params.items() if p.live}
    if any(p.validator == "enum" and _param_of(p) in live for p in problems):
        problems = list(templates.validator(template, fresh=True).iter_errors(given))  # a new file?
    details = [_detail(n, "type", "takes no attachment (only an image parameter does)") for n in misplaced]
    for problem in problems:
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


def _images(
    template: Template, given: dict, fetch: input_images.Fetch, details: list[dict]
) -> list[tuple[str, InputImage]]:
    """Each image parameter's bytes under a name of its own in the job's input folder."""
    images = []
    for name, param in template.params.items():
        if param.kind != "image" or name not in given:
            continue
        try:
            data = input_images.given(given[name], fetch)
        except errors.ImageFetchFailed as exc:
            details.append(_detail(name, "image", exc.detail))
            continue
        except ValueError:
            details.append(_detail(name, "image", "is neither base64, a data URI nor an http(s) URL"))
            continue
        extension = input_images.extension(data)
        if extension is None:
            details.append(_detail(name, "image", input_images.NOT_AN_IMAGE))
            continue
        images.append((name, InputImage(f"{name}-{uuid.uuid4().hex[:12]}{extension}", data)))
    return images


def _filled(template: Template, given: dict, images: list[tuple[str, InputImage]]) -> tuple[dict, dict]:
    """(the values used, the workflow with them set). Only the nodes a parameter fills are copied."""
    used: dict[str, Any] = {}
    workflow = dict(template.workflow)
    for name, param in template.params.items():
        value = given.get(name, param.default)
        if param.kind == "seed" and (value is None or value == "random"):
            low = int(param.minimum or 0)
            value = low + secrets.randbelow(int(param.maximum or SEED_MAX) - low + 1)
        used[name] = value
        for target in param.targets:
            node = workflow[target.node_id]
            if node is template.workflow[target.node_id]:
                node = workflow[target.node_id] = {**node, "inputs": dict(node["inputs"])}
            node["inputs"][target.input] = value
    for name, image in images:
        for target in template.params[name].targets:
            workflow[target.node_id]["inputs"][target.input] = image.name
        given_value = given[name]
        used[name] = (
            given_value
            if isinstance(given_value, str) and given_value.startswith(("http://", "https://"))
            else {"bytes": len(image.data), "sha256": offload(_sha256, image.data, size=len(image.data))}
        )
    return used, workflow


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

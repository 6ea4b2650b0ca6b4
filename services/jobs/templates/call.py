"""A template call: `{"template": name, "params": {...}}` (plus the usual job options) becomes a
finished job in one pass.

    params -> the template's JSON Schema (every problem collected: registry, call_schema) ->
    image parameters (services.jobs.input_images) -> defaults filled, seeds drawn, the workflow
    with the values set (template) -> and the call's options -> a `JobRequest`

The values used (the drawn seed too) go back with the result, so a call can be repeated exactly.
ComfyUI's node errors on an input a parameter filled are told back under that parameter's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.core import errors
from services.core.job_spec import InputImage, JobRequest
from services.jobs import input_images
from services.jobs.templates.registry import Templates
from services.jobs.templates.template import Template

Options = Callable[[dict], dict]  # a job's options as JobRequest fields (services.jobs.job_request)


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
    error of a bad option); `wait_s`: how long it waits for the check against ComfyUI. Each step
    is its own module's, entered once: the parameters against the schema (registry), the image
    parameters (input_images), the workflow filled (template), the options (job_request)."""
    clash = sorted(k for k in ("workflow", "images") if k in payload)
    if clash:
        raise errors.InvalidRequest(f"a template call sends 'params', not {' or '.join(clash)}")
    given = payload.get("params", {})
    template, details = templates.call_checked(payload["template"], given, wait_s)
    images: list[tuple[str, InputImage]] = []
    if not details:
        sent = {n: given[n] for n, p in template.params.items() if p.kind == "image" and n in given}
        images, refused = input_images.named(sent, fetch)
        details = [{"param": n, "rule": "image", "message": why} for n, why in refused]
    if details:
        raise errors.InvalidParams(template.name, details)
    used, workflow = template.filled(given, images)
    job = JobRequest(workflow=workflow, images=tuple(i for _, i in images), **options(payload))
    return Call(template, job, used)

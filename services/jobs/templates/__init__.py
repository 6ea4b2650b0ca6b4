"""Workflow templates: an exported workflow plus a small declarative map of typed parameters.

    Templates(folders, catalog)   the registry: loaded (loading), checked against ComfyUI's
                                  declared inputs (catalog), served by name (registry)
    prepare(templates, payload, options, fetch, wait_s)
                                  a call -> a finished `JobRequest` and the values it used (call)
    schema / defaults / example   what a call takes, for the routes and the OpenAPI document

A call's parameters are checked against the template's JSON Schema (schema); its image
parameters are input images like a plain job's (services.jobs.input_images).
"""

from services.jobs.templates.call import Call, is_call, prepare
from services.jobs.templates.call_schema import EXAMPLE_PNG, defaults, example, schema
from services.jobs.templates.catalog import Catalog
from services.jobs.templates.registry import Templates
from services.jobs.templates.template import SEED_MAX, Template, TemplateLoadError

__all__ = [
    "EXAMPLE_PNG",
    "SEED_MAX",
    "Call",
    "Catalog",
    "Template",
    "TemplateLoadError",
    "Templates",
    "defaults",
    "example",
    "is_call",
    "prepare",
    "schema",
]

"""Values checked against a JSON Schema declaration (draft 2020-12), the one way the worker checks
a declared shape: a job's options (services.jobs.job_request) and a template call's parameters
(services.jobs.templates.call_schema) are declared once, and the same declaration is what the
OpenAPI document shows. jsonschema's one home.

An integer is an int (1.0 is not), a number is finite, and neither is a boolean: Python's JSON
reads NaN and Infinity, and `true` is an int to Python.
"""

from __future__ import annotations

import math

import jsonschema

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
    {
        "integer": lambda _checker, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _checker, v: (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ),
    }
)
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)

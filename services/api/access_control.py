"""Which key calls, and whether it may (README: Access): every route's scope in one table, the
check before each request, a key's job slot and download quota, and the record of refusals and
admin actions. Never the key itself in a line, a label or an answer: its name."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, Response, current_app, g, request

from services.api.context import Api
from services.api.drain_routes import takes_work
from services.api.responses import asked_async
from services.core import drain, errors
from services.jobs.access import OPEN, Key
from services.jobs.quotas import Slot
from services.web import key_checks
from services.web.answers import error_response

log = logging.getLogger("worker.access")
OPEN_ROUTES = {"/healthz", "/readyz", "/openapi.json"}
DOCS = "/docs"  # Swagger UI for the document, open like it (services.api.app)
ANY_KEY = ""  # a route any known key may call
# scope by blueprint, and by endpoint where one differs from its blueprint's
BLUEPRINT_SCOPES = {
    "jobs": "jobs",
    "templates": "jobs",
    "runpod": "jobs",
    "models": "models",
    "drain": "admin",
    "comfy": "admin",
}
ENDPOINT_SCOPES = {
    "probes.metrics_page": "metrics",
    "probes.ping": ANY_KEY,
}
View = TypeVar("View", bound=Callable)


def scope_of(endpoint: str | None, path: str) -> str | None:
    """The scope a route needs: ANY_KEY for any known key, None for an open route."""
    if path in OPEN_ROUTES or path == DOCS or path.startswith(DOCS + "/"):
        return None
    if endpoint is None:
        return ANY_KEY  # no such route: a 404 for a known key only
    if endpoint in ENDPOINT_SCOPES:
        return ENDPOINT_SCOPES[endpoint]
    return BLUEPRINT_SCOPES.get(endpoint.split(".", 1)[0], ANY_KEY)


def declared(document: dict) -> dict:
    """The OpenAPI document with each operation's scope (`security: [{"bearer": [scope]}]`, a
    role as OpenAPI 3.1 allows for a bearer scheme; none for an open route)."""
    for rule in current_app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        scope = scope_of(rule.endpoint, rule.rule)
        for method, operation in document["paths"].get(path, {}).items():
            if method.upper() in (rule.methods or ()):
                operation["security"] = [] if scope is None else [{"bearer": [scope] if scope else []}]
                if scope:
                    operation["x-scope"] = scope
    return document


def install(app: Flask, api: Api) -> None:
    """The check before each request and, after an admin action, its line on record."""
    app.before_request(lambda: _check(api))
    app.after_request(lambda response: _after(api, response))


def caller() -> Key:
    """The key of the request being answered."""
    return g.get("key", OPEN)


def takes_a_slot(api: Api) -> Callable[[View], View]:
    """Marks a route whose new job takes one of its key's job slots before its body is read
    (a route that takes work: refused while the pod drains). The view is given the slot as
    `slot` and holds it until it answers: a job store that keeps the job keeps the slot too."""

    def marked(view: View) -> View:
        @functools.wraps(view)
        def holding(*args: object, **kwargs: object) -> Response:
            with _slot(api, g.key) as slot:
                return view(*args, slot=slot, **kwargs)

        holding.takes_slot = True  # type: ignore[attr-defined]
        return takes_work(holding)  # type: ignore[return-value]

    return marked


def _check(api: Api) -> Response | None:
    scope = scope_of(request.endpoint, request.path)
    if scope is None:
        return None
    try:
        key = g.key = key_checks.check(api.keys, scope, api.metrics)
    except errors.WorkerError as exc:
        return error_response(exc)
    view = current_app.view_functions.get(request.endpoint or "")
    if (
        getattr(view, "takes_work", False)
        and scope == "models"
        and drain.since(api.settings.run_layout) is None
    ):
        try:
            api.quotas.check_download(key)
        except errors.QuotaExceeded as exc:
            return error_response(key_checks.refused(api.metrics, key, exc))
        except errors.StateUnavailable as exc:
            if _kept_in_redis():
                return error_response(key_checks.refused(api.metrics, key, exc))
            _unchecked(key)
    g.allowed = True
    if not getattr(view, "takes_slot", False):  # else counted once its slot is taken
        api.metrics.request_seen(key.name, "allowed")
    return None


def _slot(api: Api, key: Key) -> Slot:
    """The request's job slot (counted allowed), or its refusal: `quota_exceeded`, or
    `state_unavailable` for an async job, which could not be kept while Redis does not answer."""
    try:
        slot = api.quotas.take_job(key)
    except errors.QuotaExceeded as exc:
        raise key_checks.refused(api.metrics, key, exc) from None
    except errors.StateUnavailable as exc:
        if _kept_in_redis():
            raise key_checks.refused(api.metrics, key, exc) from None
        _unchecked(key)  # a sync job runs while Redis is down, as one of an unlimited key does
        slot = Slot()
    api.metrics.request_seen(key.name, "allowed")
    return slot


def _unchecked(key: Key) -> None:
    log.warning(
        "the limits of key %s are not counted for %s %s: the shared state does not answer",
        key.name,
        request.method,
        key_checks.route(),
        extra={"event": "access.unchecked", "key_name": key.name, "route": key_checks.route()},
    )


def _kept_in_redis() -> bool:
    """An async submission: its job lives in the fleet's Redis, so it cannot be taken while
    Redis does not answer."""
    return request.endpoint == "runpod.run" or asked_async()


def _after(api: Api, response: Response) -> Response:
    if scope_of(request.endpoint, request.path) == "admin" and g.get("allowed"):  # a refusal has its own line
        name = g.key.name
        log.info(
            "admin %s %s by key %s: %d",
            request.method,
            key_checks.route(),
            name,
            response.status_code,
            extra={
                "event": "access.admin",
                "key_name": name,
                "route": key_checks.route(),
                "result": response.status_code,
            },
        )
    return response

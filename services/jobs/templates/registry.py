"""The templates of TEMPLATES_DIR: loaded at start, checked against ComfyUI once it answers,
served by name. A refused template never stops the others: the registry serves the good ones
and names the rejected ones with their reason."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from services.core import errors
from services.core.schema_check import Validator
from services.jobs.templates.call_schema import problems, schema
from services.jobs.templates.catalog import Catalog
from services.jobs.templates.loading import check, load
from services.jobs.templates.template import Template, TemplateLoadError

log = logging.getLogger("worker.templates")


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

    def call_checked(self, name: Any, given: Any, wait_s: float) -> tuple[Template, list[dict]]:
        """The template `name` serves (else `unknown_template`) and every problem of the call's
        parameters `given` (call_schema.problems)."""
        template = self.get(name, wait_s)
        if not isinstance(given, dict):
            return template, [{"param": None, "rule": "type", "message": "'params' must be an object"}]
        return template, problems(template, given, functools.partial(self.validator, template))

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

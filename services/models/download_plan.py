"""What one download is: an item of `/download` or of a job's `models`, checked (its type, its
target on the volume, its sha256), with its source (a URL through the SSRF guard, with the
CivitAI token for civitai.com only, or a Hugging Face file) and its state as `/download/<id>`
shows it. A source's label never carries a token, a password or a query."""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.core import errors, tracing
from services.core.config import Settings
from services.models import model_store, url_guard
from services.models.model_store import TYPES

STATES = ("queued", "running", "done", "exists", "failed")  # a download's, in order
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class Source:
    url: str
    headers: dict[str, str]
    label: str  # what the status shows: never a token


@dataclass
class Download:
    type: str
    name: str
    path: str
    source: Source
    sha256: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = "queued"  # STATES: queued -> running -> done | exists | failed
    bytes_done: int = 0
    total: int | None = None
    rate: float = 0.0
    error: str | None = None
    finished: float | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    trace: dict = field(default_factory=dict, repr=False)  # its submission's span (/download)
    counted: Callable[[int], None] | None = field(default=None, repr=False)  # told each chunk's size

    def view(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "filename": self.name,
            "source": self.source.label,
            "state": self.state,
            "bytes_done": self.bytes_done,
            "total": self.total,
            "rate_bytes_s": round(self.rate),
            "error": self.error,
            **({"trace_id": tracing.trace_id_of(self.trace)} if self.trace else {}),
        }


def plan(settings: Settings, index: int, item: Any) -> Download:
    """One item of `/download` or of a job's `models`, checked; nothing is fetched yet."""
    if not isinstance(item, dict):
        raise errors.InvalidRequest(f"item {index} must be an object")
    model_type = model_store.check_type(item.get("type"))
    sha256 = item.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.match(sha256)):
        raise errors.InvalidRequest(f"item {index}: sha256 must be 64 hex digits")
    if "url" in item:
        source, name = _url_source(settings, item["url"])
        name = item.get("filename") or name
    elif "repo_id" in item:
        source, name = _hf_source(settings, item)
    else:
        raise errors.InvalidRequest(f"item {index} needs 'url', or 'repo_id' and 'filename'")
    name = item.get("target") or name
    path = model_store.target_path(settings.model_dir, model_type, name)
    return Download(
        type=model_type, name=name, path=path, source=source, sha256=sha256.lower() if sha256 else None
    )


def _url_source(settings: Settings, url: Any) -> tuple[Source, str]:
    try:
        parts = url_guard.split(url)
    except errors.UrlNotAllowed:
        raise errors.UrlNotAllowed("'url' must be a well-formed http(s) URL with a host") from None
    url_guard.resolve(parts.hostname, url_guard.port_of(parts), settings.allow_private_downloads)
    headers = {}
    if settings.civitai_token and _within(parts.hostname, "civitai.com"):
        headers["Authorization"] = f"Bearer {settings.civitai_token}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    label = f"{parts.scheme}://{host}{port}{parts.path}"  # no user:password@, no query: they hold secrets
    return Source(url, headers, label), os.path.basename(parts.path) or "download"


def _hf_source(settings: Settings, item: dict) -> tuple[Source, str]:
    repo_id, filename, revision = item.get("repo_id"), item.get("filename"), item.get("revision")
    if not isinstance(repo_id, str) or not isinstance(filename, str) or not repo_id or not filename:
        raise errors.InvalidRequest("a Hugging Face download needs 'repo_id' and 'filename' strings")
    if revision is not None and not isinstance(revision, str):
        raise errors.InvalidRequest("'revision' must be a string")
    from huggingface_hub import hf_hub_url  # here: at start-up it costs the API ~30 ms and MBs

    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=settings.hf_endpoint)
    headers = {"Authorization": f"Bearer {settings.hf_token}"} if settings.hf_token else {}
    label = f"hf://{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    return Source(url, headers, label), os.path.basename(filename)


def _within(host: str, domain: str) -> bool:
    """`host` is `domain` or one of its subdomains (never merely a name ending in it)."""
    host = host.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


SHAPES = {  # declared once: the OpenAPI document (services.api.openapi) shows them
    "DownloadItem": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": list(TYPES), "description": "a ComfyUI model folder name"},
            "url": {"type": "string"},
            "repo_id": {"type": "string"},
            "filename": {"type": "string"},
            "revision": {"type": "string"},
            "target": {"type": "string"},
            "sha256": {"type": "string"},
        },
    },
    "Download": {
        "type": "object",
        "required": ["id", "state"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "filename": {"type": "string"},
            "source": {"type": "string"},
            "state": {"type": "string", "enum": list(STATES)},
            "bytes_done": {"type": "integer"},
            "total": {"type": ["integer", "null"]},
            "rate_bytes_s": {"type": "integer"},
            "error": {"type": ["string", "null"]},
        },
    },
}

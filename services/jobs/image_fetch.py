"""Input images given by URL (`{"name", "url"}`), fetched through the downloads' SSRF guard.

A size cap and a time limit bound each fetch; what comes back must still be an image (its
signature is checked by job_request like a base64 image). Errors say what went wrong in words
that never repeat the URL or its host: inside an envelope the URL is the user's secret too.
"""

from __future__ import annotations

import time
from typing import Any

from services.core import errors
from services.core.config import Settings
from services.models import url_guard

CHUNK = 256 * 1024


def fetch(url: str, settings: Settings) -> bytes:
    """The image's bytes, or `ImageFetchFailed` with a reason that names no part of the URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise errors.ImageFetchFailed("the url must be http(s)")
    deadline = time.monotonic() + settings.image_url_timeout_s
    try:
        response = url_guard.get(
            url, {}, settings.allow_private_downloads, timeout=settings.image_url_timeout_s
        )
    except errors.UrlNotAllowed:
        raise errors.ImageFetchFailed(
            "the url is not allowed (a private, loopback or link-local address, or no host); "
            "ALLOW_PRIVATE_DOWNLOADS=1 allows private addresses"
        ) from None
    except errors.DownloadFailed:
        raise errors.ImageFetchFailed("the server could not be reached") from None
    with response:
        if response.status_code != 200:
            raise errors.ImageFetchFailed(f"the server answered HTTP {response.status_code}")
        return _body(response, settings, deadline)


def _body(response: Any, settings: Settings, deadline: float) -> bytes:
    """At most IMAGE_URL_MAX_MB, before the deadline."""
    cap = int(settings.image_url_max_mb * 1024 * 1024)
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > cap:
        raise errors.ImageFetchFailed(_too_large(settings))
    data = bytearray()
    try:
        for chunk in response.iter_content(CHUNK):
            data += chunk
            if len(data) > cap:
                raise errors.ImageFetchFailed(_too_large(settings))
            if time.monotonic() > deadline:
                raise errors.ImageFetchFailed(_too_slow(settings))
    except errors.ImageFetchFailed:
        raise
    except Exception:  # requests/urllib3 errors of a connection that broke or timed out
        raise errors.ImageFetchFailed("the transfer broke off or timed out") from None
    return bytes(data)


def _too_large(settings: Settings) -> str:
    return f"the image is larger than {settings.image_url_max_mb:g} MB (IMAGE_URL_MAX_MB)"


def _too_slow(settings: Settings) -> str:
    return f"the image took longer than {settings.image_url_timeout_s:g} s (IMAGE_URL_TIMEOUT_S)"

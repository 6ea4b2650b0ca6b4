"""A job's input images, for plain jobs (`images`: `{name, image}` or `{name, url}`) and
template calls (an image parameter) alike: base64 (a data URI too) or an envelope v2's
attachment (bytes) or an http(s) URL, recognized by its signature (InputImage.kind_of).

A URL is fetched through the downloads' SSRF guard, with a size cap and a time limit. Errors say
what went wrong in words that never repeat the URL or its host: inside an envelope the URL is the
user's secret too.
"""

from __future__ import annotations

import binascii
import re
import uuid
from collections.abc import Callable
from typing import Any

from services.core import errors
from services.core.codec import unb64
from services.core.config import Settings
from services.core.job_spec import InputImage, short
from services.core.offload import offload
from services.models import url_guard

Fetch = Callable[[str], bytes]  # the bytes of an image given by URL (`fetch` with the settings)
_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
NOT_AN_IMAGE = "is not a PNG, JPEG, WEBP, GIF, BMP or TIFF image"


def fetch(url: str, settings: Settings) -> bytes:
    """The image's bytes, or `ImageFetchFailed` with a reason that names no part of the URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise errors.ImageFetchFailed("the url must be http(s)")
    cap = int(settings.image_url_max_mb * 1024 * 1024)
    try:
        return url_guard.read(url, settings.allow_private_downloads, settings.image_url_timeout_s, cap)
    except errors.UrlNotAllowed:
        raise errors.ImageFetchFailed(
            "the url is not allowed (a private, loopback or link-local address, or no host); "
            "ALLOW_PRIVATE_DOWNLOADS=1 allows private addresses"
        ) from None
    except errors.DownloadFailed:
        raise errors.ImageFetchFailed("the server could not be reached") from None
    except url_guard.Unread as exc:
        reasons = {
            "status": f"the server answered HTTP {exc.status}",
            "too_large": _too_large(settings),
            "too_slow": _too_slow(settings),
            "broken": "the transfer broke off or timed out",
        }
        raise errors.ImageFetchFailed(reasons[exc.reason]) from None


def _too_large(settings: Settings) -> str:
    return f"the image is larger than {settings.image_url_max_mb:g} MB (IMAGE_URL_MAX_MB)"


def _too_slow(settings: Settings) -> str:
    return f"the image took longer than {settings.image_url_timeout_s:g} s (IMAGE_URL_TIMEOUT_S)"


def listed(value: Any, fetch: Fetch | None) -> tuple[InputImage, ...]:
    """A plain job's `images`, each checked; `fetch`: None refuses images by URL."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise errors.InvalidRequest("'images' must be a list of {name, image} or {name, url}")
    images, seen = [], set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise errors.InvalidRequest(f"images[{index}] must be an object with 'name' and 'image' or 'url'")
        name = item.get("name")
        if not isinstance(name, str) or not _safe_name(name):
            raise errors.InvalidRequest(
                f"images[{index}].name must be a plain file name (no folders, '..', or control characters)"
            )
        if name in seen:
            raise errors.InvalidRequest(f"images[{index}].name repeats an earlier name")
        seen.add(name)
        data = _listed_data(index, name, item, fetch)
        if InputImage.kind_of(data) is None:
            raise errors.InvalidRequest(f"images[{index}] ({short(name)!r}) {NOT_AN_IMAGE}")
        images.append(InputImage(name=name, data=data))
    return tuple(images)


def named(values: dict[str, Any], fetch: Fetch) -> tuple[list[tuple[str, InputImage]], list[tuple[str, str]]]:
    """A template call's image parameters (name -> value): each one's input image, under a
    file name of its own, and (name, why) for each that is no image."""
    images, refused = [], []
    for name, value in values.items():
        try:
            data = given(value, fetch)
        except errors.ImageFetchFailed as exc:
            refused.append((name, exc.detail))
            continue
        except ValueError:
            refused.append((name, "is neither base64, a data URI nor an http(s) URL"))
            continue
        kind = InputImage.kind_of(data)
        if kind is None:
            refused.append((name, NOT_AN_IMAGE))
            continue
        images.append((name, InputImage(f"{name}-{uuid.uuid4().hex[:12]}{kind}", data)))
    return images, refused


def given(value: Any, fetch: Fetch) -> bytes:
    """The bytes of one image given as a value (a template's image parameter): an attachment,
    a URL or base64. Raises ImageFetchFailed, or ValueError when it is none of them."""
    if isinstance(value, bytes):  # an envelope v2's attachment
        return value
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return fetch(value)
    # megabytes of base64: off the gevent hub (binascii.Error is a ValueError)
    return offload(decode_base64, value, size=len(value) if isinstance(value, str) else 0)


def decode_base64(text: Any) -> bytes:
    """Standard base64, with an optional `data:<mime>;base64,` prefix as browsers make it."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    data = unb64(_DATA_URI.sub("", text.strip(), count=1))
    if not data:
        raise ValueError("empty")
    return data


def _listed_data(index: int, name: str, item: dict, fetch: Fetch | None) -> bytes:
    if "url" in item and "image" not in item:
        if fetch is None:
            raise errors.InvalidRequest(f"images[{index}]: images by URL are not taken here")
        try:
            return fetch(item["url"])
        except errors.ImageFetchFailed as exc:
            raise errors.ImageFetchFailed(f"images[{index}] ({short(name)!r}): {exc.detail}") from None
    image = item.get("image")
    if isinstance(image, bytes):  # an envelope v2's attachment
        return image
    try:
        return offload(decode_base64, image, size=len(image) if isinstance(image, str) else 0)
    except (ValueError, binascii.Error):
        raise errors.InvalidRequest(f"images[{index}].image is not valid base64") from None


def _safe_name(name: str) -> bool:
    return (
        0 < len(name) <= 200
        and name not in (".", "..")
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )

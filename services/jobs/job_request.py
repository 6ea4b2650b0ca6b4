"""What a job asks for, checked before anything touches ComfyUI.

ComfyUI answers a non-dict prompt with a bare 500 and a graph export with a confusing
`no_prompt`, so the shape is validated here and every refusal says what to fix.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable
from typing import Any

from services.core import errors
from services.core.codec import unb64
from services.core.config import RESPONSE_FORMATS
from services.core.job_spec import (
    InputImage,
    JobRequest,
    kind,
    looks_like_graph_export,
    short,
    validate_workflow,
)
from services.core.offload import offload

_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)


def parse(
    payload: Any,
    *,
    default_timeout_s: float,
    no_history_default: bool,
    output_format: str = "worker",
    fetch: Callable[[str], bytes] | None = None,
) -> JobRequest:
    """`fetch` gets the bytes of an image given by URL (services.jobs.image_fetch); without it such
    images are refused."""
    """Turn a decoded payload into a `JobRequest`, or raise the error that says what is wrong."""
    if not isinstance(payload, dict):
        raise errors.InvalidRequest(f"the payload must be a JSON object, got {kind(payload)}")
    if "workflow" in payload:
        workflow = payload["workflow"]
        options = payload
    elif looks_like_graph_export(payload) or _looks_like_workflow(payload):
        workflow, options = payload, {}
    else:
        raise errors.InvalidRequest("the payload has no 'workflow' (an API-format ComfyUI workflow)")
    return JobRequest(
        workflow=validate_workflow(workflow),
        images=_images(options.get("images"), fetch),
        no_history=_flag(options, "no_history", no_history_default),
        timeout_s=_timeout(options.get("timeout_s"), default_timeout_s),
        output_format=_output_format(options.get("output_format"), output_format),
        comfy_org_api_key=_api_key(options.get("comfy_org_api_key")),
        models=_models(options.get("models")),
    )


MAX_MODELS = 64


def _models(models: Any) -> tuple[dict, ...]:
    if models is None:
        return ()
    if (
        not isinstance(models, list)
        or len(models) > MAX_MODELS
        or not all(isinstance(m, dict) for m in models)
    ):
        raise errors.InvalidRequest(
            f"'models' must be a list of at most {MAX_MODELS} objects: "
            "{type, url | repo_id+filename+revision?, filename?, sha256?}"
        )
    return tuple(models)


def decode_base64_image(text: Any) -> bytes:
    """Standard base64, with an optional `data:<mime>;base64,` prefix as browsers make it."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    data = unb64(_DATA_URI.sub("", text.strip(), count=1))
    if not data:
        raise ValueError("empty")
    return data


def _images(value: Any, fetch: Callable[[str], bytes] | None) -> tuple[InputImage, ...]:
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
        data = _image_data(index, name, item, fetch)
        if image_extension(data) is None:
            raise errors.InvalidRequest(
                f"images[{index}] ({short(name)!r}) is not a PNG, JPEG, WEBP, GIF, BMP or TIFF image"
            )
        images.append(InputImage(name=name, data=data))
    return tuple(images)


def _image_data(index: int, name: str, item: dict, fetch: Callable[[str], bytes] | None) -> bytes:
    if "url" in item and "image" not in item:
        return _fetched(index, name, item["url"], fetch)
    image = item.get("image")
    if isinstance(image, bytes):  # an envelope v2's attachment
        return image
    try:
        return offload(decode_base64_image, image, size=len(image) if isinstance(image, str) else 0)
    except (ValueError, binascii.Error):
        raise errors.InvalidRequest(f"images[{index}].image is not valid base64") from None


def _fetched(index: int, name: str, url: Any, fetch: Callable[[str], bytes] | None) -> bytes:
    if fetch is None:
        raise errors.InvalidRequest(f"images[{index}]: images by URL are not taken here")
    try:
        return fetch(url)
    except errors.ImageFetchFailed as exc:
        raise errors.ImageFetchFailed(f"images[{index}] ({short(name)!r}): {exc.detail}") from None


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tiff"),
    (b"MM\x00*", ".tiff"),
)


def image_extension(data: bytes) -> str | None:
    """The image's kind by its signature, or None: ComfyUI's LoadImage would otherwise fail late,
    inside the workflow."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((extension for signature, extension in _SIGNATURES if data.startswith(signature)), None)


def _safe_name(name: str) -> bool:
    return (
        0 < len(name) <= 200
        and name not in (".", "..")
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


def _flag(options: dict, key: str, default: bool) -> bool:
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise errors.InvalidRequest(f"'{key}' must be true or false")
    return value


def _timeout(value: Any, default: float) -> float:
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise errors.InvalidRequest("'timeout_s' must be a positive number of seconds")
    return min(float(value), default)


def _output_format(value: Any, default: str) -> str:
    if value is None:
        return default
    if value not in RESPONSE_FORMATS:
        raise errors.InvalidRequest(f"'output_format' must be one of: {', '.join(RESPONSE_FORMATS)}")
    return value


def _api_key(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isprintable() or len(value) > 4096:
        raise errors.InvalidRequest("'comfy_org_api_key' must be a string (a Comfy.org API key)")
    return value


def _looks_like_workflow(value: dict) -> bool:
    return bool(value) and all(isinstance(node, dict) and "class_type" in node for node in value.values())

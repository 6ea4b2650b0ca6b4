"""Standard base64 of large payloads (images, outputs, ciphertext) with pybase64's SIMD code.

The standard library's base64 runs at ~0.5 GB/s here: a 12.6 MB image in and out of an
encrypted job went through it four times on the worker and four on the client, ~250 ms in all;
pybase64 makes that ~10 ms, and holds the interpreter lock (which the gevent hub shares) for
about a millisecond per 10 MB.
"""

from __future__ import annotations

import binascii
from typing import Any

import pybase64


class Base64Text(str):
    """Text `b64` made: JSON needs no escaping of it, so services.core.json_text splices it
    into an answer without scanning its megabytes first."""

    __slots__ = ()


def b64(data: bytes) -> Base64Text:
    """Standard base64 with padding."""
    return Base64Text(pybase64.b64encode_as_string(data))


def unb64(text: Any) -> bytes:
    """Standard base64 with padding; anything else is not an envelope we made."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    if not text.isascii():
        raise binascii.Error("not base64")
    return pybase64.b64decode(text, validate=True)

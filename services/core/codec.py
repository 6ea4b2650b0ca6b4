"""Standard base64 of large payloads (images, outputs, ciphertext), in slices.

base64 holds the interpreter lock for a whole call, and under gunicorn's gevent worker the hub
shares that lock with the pool thread doing the work (docs/runtime.md): slices let the hub run
between them, so probes stay fast while megabytes are encoded.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

B64_SLICE = 3 * 256 * 1024  # a multiple of 3: slices encode to the same text as the whole
UNB64_SLICE = 4 * 256 * 1024  # a multiple of 4: slices decode to the same bytes as the whole


def b64(data: bytes) -> str:
    """Standard base64, in slices: base64 holds the GIL, and between slices the gevent hub
    (which shares it with the pool thread doing this) gets to run."""
    if len(data) <= B64_SLICE:
        return base64.b64encode(data).decode("ascii")
    return "".join(
        base64.b64encode(data[i : i + B64_SLICE]).decode("ascii") for i in range(0, len(data), B64_SLICE)
    )


def unb64(text: Any) -> bytes:
    """Standard base64 with padding; anything else is not an envelope we made. In slices, as
    `b64`; padding is taken only at the very end, as a decode of the whole would."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    if len(text) <= UNB64_SLICE:
        return base64.b64decode(text.encode("ascii"), validate=True)
    if len(text) % 4 or "=" in text[: len(text) - 2]:
        raise binascii.Error("padding inside the text")
    return b"".join(
        base64.b64decode(text[i : i + UNB64_SLICE].encode("ascii"), validate=True)
        for i in range(0, len(text), UNB64_SLICE)
    )

"""Sealed requests and answers (PyNaCl `Box`), the same for both modes.

    open_body(body, keyring)  a request as it came -> the `Opened` payload and the box that
                              seals its answer (None: a plain request)
    seal_answer(result, opened)  the answer, sealed the way its request came
    ReplayGuard               a sealed request runs once (replay.py)
    keep_secret/open_secret   what the fleet keeps in Redis on a job's behalf, sealed to the worker

v1 (v1.py) is JSON around a box; v2 (v2.py) is bytes, with images in it as bytes. Only envelope
errors answer in plaintext: without an opened box there is no key to answer with.
"""

from __future__ import annotations

from typing import Any

from services.core.offload import offload
from services.jobs.envelopes import v1, v2
from services.jobs.envelopes.replay import ReplayGuard
from services.jobs.envelopes.v1 import (
    Keyring,
    Opened,
    is_envelope,
    keep_secret,
    keypair,
    kid_of,
    open_secret,
    public_key_of,
    seal_bytes,
)
from services.jobs.envelopes.v2 import (
    MEDIA_TYPE,
    PLAIN_MEDIA_TYPE,
    Sealed,
    media_type_of,
    read_plain,
    write_plain,
)

__all__ = [
    "MEDIA_TYPE",
    "PLAIN_MEDIA_TYPE",
    "Keyring",
    "Opened",
    "ReplayGuard",
    "Sealed",
    "is_envelope",
    "keep_secret",
    "keypair",
    "kid_of",
    "media_type_of",
    "open_body",
    "open_secret",
    "public_key_of",
    "read_plain",
    "seal_answer",
    "seal_bytes",
    "write_plain",
]


def open_body(body: Any, keyring: Keyring | None) -> Opened | None:
    """The opened request, None for a plain one, or the envelope error that says why not.
    Megabytes of box open off the gevent hub."""
    if isinstance(body, Sealed):
        return offload(v2.open_request, body, keyring, size=len(body.ciphertext))
    if is_envelope(body):
        size = len(body["ciphertext"]) if isinstance(body.get("ciphertext"), str) else 0
        return offload(v1.open_request, body, keyring, size=size)
    return None


def seal_answer(result: dict, opened: Opened) -> dict | bytes:
    """`result` sealed to the client's ephemeral key the way its request came (v2: bytes)."""
    size = sum(len(o.get("data", "")) for o in result.get("outputs") or [])
    seal = v2.seal if opened.version == 2 else v1.seal
    return offload(seal, result, opened.box, size=size)


SHAPES = {  # declared once: the OpenAPI document (services.api.openapi) shows them
    "SealedAnswer": {
        "type": "object",
        "required": ["encrypted", "nonce", "ciphertext"],
        "properties": {
            "encrypted": {"type": "boolean"},
            "nonce": {"type": "string"},
            "ciphertext": {"type": "string"},
        },
    },
    "Envelope": {
        "type": "object",
        "required": ["encrypted", "epk", "nonce", "ciphertext"],
        "properties": {
            "encrypted": {"type": "boolean", "enum": [True]},
            "kid": {
                "type": "string",
                "description": "the worker key it is sealed to (GET /healthz keys)",
            },
            "epk": {"type": "string"},
            "nonce": {"type": "string"},
            "ciphertext": {"type": "string"},
        },
    },
}

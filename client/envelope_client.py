"""Client side of envelope v1: seal a payload for a worker, open its sealed answer.

Depends only on PyNaCl, so it can be copied into any client; with pybase64 installed (the
`comfy-worker` package brings it) base64 of megabytes runs ~25x faster. A fresh ephemeral key
pair and nonce are made per request; keep the returned `EphemeralKey` to open the answer.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from nacl.bindings import crypto_box_easy_afternm
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

try:
    from pybase64 import b64decode, b64encode
except ImportError:  # a copy of this file in a client without it
    from base64 import b64decode, b64encode

EphemeralKey = PrivateKey


def seal_request(payload: Any, server_public_key_b64: str) -> tuple[dict, EphemeralKey]:
    """The envelope to send, and the ephemeral key that opens the worker's answer. A request
    object gets `ts` (now, Unix seconds): a worker refuses it once it is older than its replay
    window, whether or not it remembers having seen it."""
    if isinstance(payload, dict) and "workflow" in payload and "ts" not in payload:
        payload = {**payload, "ts": int(time.time())}
    ephemeral = PrivateKey.generate()
    key = Box(ephemeral, PublicKey(b64decode(server_public_key_b64))).shared_key()
    nonce = random(Box.NONCE_SIZE)
    ciphertext = crypto_box_easy_afternm(payload_json(payload), nonce, key)  # Box.encrypt's own
    envelope = {
        "encrypted": True,
        "kid": key_id(server_public_key_b64),
        "epk": _b64(bytes(ephemeral.public_key)),
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    return envelope, ephemeral


def key_id(server_public_key_b64: str) -> str:
    """The worker key's id (`kid`): the first 16 hex digits of SHA-256 of its public bytes. A
    worker that no longer holds the key answers `unknown_key` naming its current one."""
    return hashlib.sha256(b64decode(server_public_key_b64)).hexdigest()[:16]


def payload_json(payload: Any) -> bytes:
    """json.dumps(payload) in UTF-8, each image's base64 put in without json.dumps's scan of it
    (~40 ms for a 12 MB image); also the body of a plain request."""
    images = payload.get("images") if isinstance(payload, dict) else None
    if not (isinstance(images, list) and images and all(_verbatim_image(i) for i in images)):
        return json.dumps(payload).encode("utf-8")
    marker = f"image-{random(16).hex()}"
    parts = json.dumps({**payload, "images": [{**i, "image": marker} for i in images]}).split(f'"{marker}"')
    if len(parts) != len(images) + 1:  # the marker stood in the payload itself
        return json.dumps(payload).encode("utf-8")
    pieces = [parts[0]]
    for image, part in zip(images, parts[1:], strict=True):
        pieces += ['"', image["image"], '"', part]
    return "".join(pieces).encode("utf-8")


def _verbatim_image(item: Any) -> bool:
    """An inline image whose text JSON takes as it is (one fast search per escaped character)."""
    text = item.get("image") if isinstance(item, dict) else None
    escaped = ('"', "\\", "\x7f", *map(chr, range(32)))
    return isinstance(text, str) and text.isascii() and not any(char in text for char in escaped)


def envelope_json(envelope: dict) -> bytes:
    """The envelope as the JSON body to send, without json.dumps's scan of the ciphertext (~50 ms
    for a 12 MB image): base64 that seal_request made, JSON as it is (a non-ASCII one fails)."""
    head = json.dumps({k: envelope[k] for k in ("encrypted", "kid", "epk", "nonce") if k in envelope})
    return f'{head[:-1]}, "ciphertext": "{envelope["ciphertext"]}"}}'.encode("ascii")


def open_answer(answer: dict, ephemeral: EphemeralKey, server_public_key_b64: str) -> Any:
    """The worker's result; a plaintext answer (an envelope-level error) is returned as it is."""
    if not (isinstance(answer, dict) and answer.get("encrypted") is True):
        return answer
    server = PublicKey(b64decode(server_public_key_b64))
    plaintext = Box(ephemeral, server).decrypt(b64decode(answer["ciphertext"]), b64decode(answer["nonce"]))
    return json.loads(plaintext.decode("utf-8"))


def open_blob(blob: bytes, ephemeral: EphemeralKey, server_public_key_b64: str) -> bytes:
    """An output the worker moved to a bucket sealed (`"sealed": true`): nonce + box."""
    return Box(ephemeral, PublicKey(b64decode(server_public_key_b64))).decrypt(blob)


def _b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")

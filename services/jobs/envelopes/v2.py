"""Envelope v2: v1's box (services.jobs.envelopes.v1) sent as bytes, with images in it as bytes.

v1 carries a 12 MB image as base64, in JSON, in a box, in base64, in JSON: each way four passes
over the megabytes that are not the image's own (~300 ms of an encrypted 12.6 MB round trip
here). v2 is for the pod's calls answered in the same request (`/run`, `/templates/<name>/run`),
sent with Content-Type MEDIA_TYPE and answered with it:

    request = MAGIC | kid (8 bytes; zeros: none) | epk (32) | nonce (24) | box
    answer  = MAGIC | nonce (24) | box, sealed with the box that opened the request

A box opens to parts, each a u64 big-endian length and its bytes: the JSON payload (or result)
first, then attachments 0, 1, ... In the payload `{"attachment": n}` stands where v1 has base64
(an image's `image`, a template's image parameter); in the result each output's base64 `data`
becomes `attachment: n`. Errors before the box opens answer plaintext JSON, as in v1.

The same parts travel without a box for plain jobs (PLAIN_MEDIA_TYPE: PLAIN_MAGIC | parts, and
so answered), where ENCRYPTION_REQUIRED allows them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_box_easy_afternm
from nacl.public import Box
from nacl.utils import random

from services.core import errors, json_text
from services.core.codec import unb64
from services.jobs.envelopes.v1 import KEY_SIZE, NONCE_SIZE, Keyring, Opened, unbox

MEDIA_TYPE = "application/vnd.comfy-worker.envelope-v2"
MAGIC = b"CWE2"
PLAIN_MEDIA_TYPE = "application/vnd.comfy-worker.parts"
PLAIN_MAGIC = b"CWP2"
KID_SIZE = 8
MAX_ATTACHMENTS = 1024  # a body of many (empty) parts is refused before it costs memory
_LENGTH = struct.Struct(">Q")
_TAG_SIZE = 16  # Poly1305's
_HEADER = len(MAGIC) + KID_SIZE + KEY_SIZE + NONCE_SIZE


@dataclass(frozen=True)
class Sealed:
    """A v2 request as it arrived: its header read, its box not yet opened."""

    kid: str | None
    epk: bytes
    nonce: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Sealed:
        if raw[: len(MAGIC)] != MAGIC:
            raise errors.InvalidCiphertext(f"an envelope v2 body starts with {MAGIC.decode()}")
        if len(raw) < _HEADER + _TAG_SIZE:
            raise errors.InvalidCiphertext(f"an envelope v2 body is at least {_HEADER + _TAG_SIZE} bytes")
        kid_at, epk_at, nonce_at = len(MAGIC), len(MAGIC) + KID_SIZE, len(MAGIC) + KID_SIZE + KEY_SIZE
        kid = raw[kid_at:epk_at]
        return cls(
            kid=kid.hex() if any(kid) else None,
            epk=raw[epk_at:nonce_at],
            nonce=raw[nonce_at:_HEADER],
            ciphertext=raw[_HEADER:],
        )


def open_request(sealed: Sealed, keyring: Keyring | None) -> Opened:
    """Open a v2 request, its attachments put where the payload names them (as bytes)."""
    if keyring is None:
        raise errors.EncryptionUnavailable("this worker has no private key (WORKER_PRIVATE_KEY_B64)")
    box, plaintext, kid = unbox(keyring, sealed.kid, sealed.epk, sealed.nonce, sealed.ciphertext)
    payload = _payload(plaintext, "the decrypted payload")
    return Opened(payload=payload, box=box, epk=sealed.epk, nonce=sealed.nonce, kid=kid, version=2)


def seal(result: dict, box: Box) -> bytes:
    """The answer: `result` with its outputs' bytes as attachments, sealed with a fresh nonce."""
    nonce = random(NONCE_SIZE)
    return b"".join((MAGIC, nonce, crypto_box_easy_afternm(_joined(result), nonce, box.shared_key())))


def read_plain(raw: bytes, template: str | None = None) -> Any:
    """A plain request in parts (PLAIN_MAGIC, then the parts a box would hold): the payload with
    its attachments put in; for plain jobs whose images should not pay for base64 and JSON.
    `template`: a call of it, whose payload is the parameters alone, as its JSON body is."""
    if raw[: len(PLAIN_MAGIC)] != PLAIN_MAGIC:
        raise errors.InvalidRequest(f"a body of {PLAIN_MEDIA_TYPE} starts with {PLAIN_MAGIC.decode()}")
    return _payload(memoryview(raw)[len(PLAIN_MAGIC) :], "the payload", template)


def write_plain(result: dict) -> bytes:
    """The answer to a plain request in parts, in parts."""
    return PLAIN_MAGIC + _joined(result)


def media_type_of(answer: bytes) -> str:
    return PLAIN_MEDIA_TYPE if answer.startswith(PLAIN_MAGIC) else MEDIA_TYPE


def _payload(data: bytes | memoryview, what: str, template: str | None = None) -> Any:
    head, *attachments = _parts(data)
    try:
        payload = json_text.loads(bytes(head))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.InvalidJson(f"{what} is not UTF-8 JSON") from None
    except RecursionError:
        raise errors.InvalidJson(f"{what} is nested too deeply") from None
    if template is not None:
        payload = {"template": template, "params": payload}
    _attach(payload, attachments)
    return payload


def _joined(result: dict) -> bytes:
    head, blobs = _detach(result)
    parts = [json_text.dumps(head).encode("utf-8"), *blobs]
    return b"".join(piece for part in parts for piece in (_LENGTH.pack(len(part)), part))


def _parts(data: bytes | memoryview) -> list[memoryview]:
    view, parts, at = memoryview(data), [], 0
    while at < len(view):
        if len(parts) > MAX_ATTACHMENTS:
            raise errors.InvalidRequest(f"the parts hold more than {MAX_ATTACHMENTS} attachments")
        if at + _LENGTH.size > len(view):
            raise errors.InvalidRequest("the parts end inside a part's length")
        (length,) = _LENGTH.unpack_from(view, at)
        at += _LENGTH.size
        if at + length > len(view):
            raise errors.InvalidRequest("a part runs past the end of the parts")
        parts.append(view[at : at + length])
        at += length
    if not parts:
        raise errors.InvalidRequest("the parts hold no payload")
    return parts


def _attach(payload: Any, attachments: list[memoryview]) -> None:
    """`{"attachment": n}` in an image's `image` or a template's parameter -> attachment n's
    bytes. Each attachment is named once, so the payload holds no more bytes than the body."""
    if not isinstance(payload, dict):
        return
    images, params, named = payload.get("images"), payload.get("params"), {}
    if isinstance(images, list):
        for index, item in enumerate(images):
            if isinstance(item, dict) and isinstance(item.get("image"), dict):
                item["image"] = _attachment(item["image"], attachments, f"images[{index}].image", named)
    if isinstance(params, dict):
        for name, value in params.items():
            if isinstance(value, dict) and "attachment" in value:
                params[name] = _attachment(value, attachments, f"params.{name}", named)


def _attachment(reference: dict, attachments: list[memoryview], where: str, named: dict[int, str]) -> bytes:
    number = reference.get("attachment")
    if set(reference) != {"attachment"} or isinstance(number, bool) or not isinstance(number, int):
        raise errors.InvalidRequest(f'{where} must be {{"attachment": n}} with n a whole number')
    if not 0 <= number < len(attachments):
        raise errors.InvalidRequest(
            f"{where} names attachment {number}; the envelope holds {len(attachments)}"
        )
    if number in named:
        raise errors.InvalidRequest(
            f"{where} names attachment {number}, which {named[number]} names already; "
            "send an image once for each place"
        )
    named[number] = where
    return bytes(attachments[number])


def _detach(result: dict) -> tuple[dict, list[bytes]]:
    """Each output's base64 `data` (both answer shapes) out of the result, as bytes."""
    blobs: list[bytes] = []

    def moved(output: Any, inline: bool) -> Any:
        if not (inline and isinstance(output, dict) and isinstance(output.get("data"), str)):
            return output
        blobs.append(unb64(output["data"]))
        return {**{k: v for k, v in output.items() if k != "data"}, "attachment": len(blobs) - 1}

    head = dict(result)
    if isinstance(result.get("outputs"), list):
        head["outputs"] = [moved(o, True) for o in result["outputs"]]
    if isinstance(result.get("images"), list):  # worker-comfyui's shape: a moved output's data is its URL
        head["images"] = [
            moved(o, isinstance(o, dict) and o.get("type") == "base64") for o in result["images"]
        ]
    return head, blobs

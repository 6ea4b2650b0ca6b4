"""Client side of the envelopes: seal a payload for a worker, open its sealed answer. v1 is
JSON (every route, RunPod too); v2 is bytes, for the pod's calls answered in the same request,
where a big image costs its own bytes only (`seal_request_v2`).

Depends only on PyNaCl, so it can be copied into any client; with pybase64 installed (the
`comfy-worker` package brings it) base64 of megabytes runs ~25x faster. A fresh ephemeral key
pair and nonce are made per request; keep the returned `EphemeralKey` to open the answer.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from typing import Any

from nacl.bindings import crypto_box_easy_afternm
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

try:
    from pybase64 import b64decode, b64encode, b64encode_as_string

    FAST_BASE64 = True
except ImportError:  # a copy of this file in a client without it
    from base64 import b64decode, b64encode

    FAST_BASE64 = False

    def b64encode_as_string(data: bytes) -> str:
        return b64encode(data).decode("ascii")


V2_MEDIA_TYPE = "application/vnd.comfy-worker.envelope-v2"
V2_MAGIC = b"CWE2"
V2_PLAIN_MEDIA_TYPE = "application/vnd.comfy-worker.parts"
V2_PLAIN_MAGIC = b"CWP2"
_LENGTH = struct.Struct(">Q")
LONG = 64 * 1024  # strings this long are base64 to write and read without json's scan

EphemeralKey = PrivateKey


def seal_request(payload: Any, server_public_key_b64: str) -> tuple[dict, EphemeralKey]:
    """The envelope v1 to send, and the ephemeral key that opens the worker's answer."""
    ephemeral = PrivateKey.generate()
    key = Box(ephemeral, PublicKey(b64decode(server_public_key_b64))).shared_key()
    nonce = random(Box.NONCE_SIZE)
    ciphertext = crypto_box_easy_afternm(payload_json(_stamped(payload)), nonce, key)  # Box.encrypt's own
    envelope = {
        "encrypted": True,
        "kid": key_id(server_public_key_b64),
        "epk": b64encode_as_string(bytes(ephemeral.public_key)),
        "nonce": b64encode_as_string(nonce),
        "ciphertext": b64encode_as_string(ciphertext),
    }
    return envelope, ephemeral


def seal_request_v2(payload: Any, server_public_key_b64: str) -> tuple[bytes, EphemeralKey]:
    """Envelope v2, for the pod's calls answered in the same request (`/run`,
    `/templates/<name>/run`; POST it with Content-Type V2_MEDIA_TYPE): bytes given where v1 takes
    base64 (an image's `image`, a template's image parameter) travel in the box as they are. The
    body to send, and the ephemeral key that opens the answer (`open_answer_v2`)."""
    head, attachments = _detached(_stamped(payload))
    plaintext = _joined([json.dumps(head).encode("utf-8"), *attachments])
    ephemeral = PrivateKey.generate()
    key = Box(ephemeral, PublicKey(b64decode(server_public_key_b64))).shared_key()
    nonce = random(Box.NONCE_SIZE)
    kid = bytes.fromhex(key_id(server_public_key_b64))
    box = crypto_box_easy_afternm(plaintext, nonce, key)
    return b"".join((V2_MAGIC, kid, bytes(ephemeral.public_key), nonce, box)), ephemeral


def plain_request_v2(payload: Any, template: bool = False) -> bytes:
    """A plain job in the parts a v2 box holds, to POST with Content-Type V2_PLAIN_MEDIA_TYPE
    (where the worker takes plaintext): bytes images cost their bytes, not base64 in JSON.
    `template`: the payload is a template's parameters alone (the body of its own route)."""
    head, attachments = _detached({"params": payload} if template else payload)
    head = head["params"] if template else head
    return V2_PLAIN_MAGIC + _joined([json.dumps(head).encode("utf-8"), *attachments])


def open_answer_v2(
    body: bytes, ephemeral: EphemeralKey | None = None, server_public_key_b64: str = ""
) -> Any:
    """The worker's result, each output's `data` its bytes: opened (an envelope v2's answer, with
    the key `seal_request_v2` returned) or read (a plain request's); a JSON answer (an error
    before the worker read the body or opened the box) is returned as it is."""
    if body.startswith(V2_PLAIN_MAGIC):
        plaintext: bytes | memoryview = memoryview(body)[len(V2_PLAIN_MAGIC) :]
    elif body.startswith(V2_MAGIC) and ephemeral is not None:
        nonce_end = len(V2_MAGIC) + Box.NONCE_SIZE
        server = PublicKey(b64decode(server_public_key_b64))
        plaintext = Box(ephemeral, server).decrypt(body[nonce_end:], body[len(V2_MAGIC) : nonce_end])
    else:
        return json.loads(body.decode("utf-8"))
    head, *attachments = _parts(plaintext)
    result = json.loads(str(head, "utf-8"))
    for key in ("outputs", "images"):
        for output in result.get(key) or [] if isinstance(result, dict) else []:
            if isinstance(output, dict) and isinstance(output.get("attachment"), int):
                output["data"] = bytes(attachments[output.pop("attachment")])
    return result


def _stamped(payload: Any) -> Any:
    """A request object gets `ts` (now, Unix seconds): a worker refuses it once it is older
    than its replay window, whether or not it remembers having seen it."""
    if isinstance(payload, dict) and ("workflow" in payload or "template" in payload) and "ts" not in payload:
        return {**payload, "ts": int(time.time())}
    return payload


def _detached(payload: Any) -> tuple[Any, list[bytes]]:
    """The payload with each bytes image (or image parameter) as `{"attachment": n}`."""
    attachments: list[bytes] = []

    def attached(value: Any) -> Any:
        if not isinstance(value, bytes | bytearray | memoryview):
            return value
        attachments.append(bytes(value))
        return {"attachment": len(attachments) - 1}

    if not isinstance(payload, dict):
        return payload, attachments
    head = dict(payload)
    if isinstance(payload.get("images"), list):
        head["images"] = [
            {**i, "image": attached(i.get("image"))} if isinstance(i, dict) and "image" in i else i
            for i in payload["images"]
        ]
    if isinstance(payload.get("params"), dict):
        head["params"] = {name: attached(value) for name, value in payload["params"].items()}
    return head, attachments


def _joined(parts: list[bytes]) -> bytes:
    return b"".join(piece for part in parts for piece in (_LENGTH.pack(len(part)), part))


def _parts(plaintext: bytes | memoryview) -> list[memoryview]:
    view, parts, at = memoryview(plaintext), [], 0
    while at + _LENGTH.size <= len(view):
        (length,) = _LENGTH.unpack_from(view, at)
        parts.append(view[at + _LENGTH.size : at + _LENGTH.size + length])
        at += _LENGTH.size + length
    if at != len(view) or not parts:
        raise ValueError("the opened answer's parts do not add up")
    return parts


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
    """An inline image whose text JSON takes as it is: base64 (one SIMD pass)."""
    text = item.get("image") if isinstance(item, dict) else None
    return isinstance(text, str) and FAST_BASE64 and _is_base64(text)


def _is_base64(text: str | memoryview) -> bool:
    """Base64's characters only, in whole quads (text JSON takes as it is): one SIMD pass in
    256 KiB pieces, so no copy of the megabytes is made."""
    try:
        for start in range(0, len(text), 256 * 1024):
            b64decode(text[start : start + 256 * 1024], validate=True)
    except ValueError:  # binascii.Error is one
        return False
    return True


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
    return read_answer(plaintext)


def read_answer(raw: bytes) -> Any:
    """json.loads of a worker's answer (the HTTP body, or an opened one): long base64 strings
    (ciphertext, outputs) are cut out of the bytes by their quotes first, ~1 ms where json's
    scanner takes ~40 ms for 17 MB, and put back into what json makes of the rest."""
    cuts = _long_base64(raw) if FAST_BASE64 else []
    if not cuts:
        return json.loads(raw.decode("utf-8"))
    hole, view = f"z{random(16).hex()}", memoryview(raw)
    pieces, start, holes = [], 0, {}
    for number, (begin, end) in enumerate(cuts):
        pieces += [raw[start:begin], f"{hole}{number}".encode()]
        holes[f"{hole}{number}"], start = str(view[begin:end], "ascii"), end
    try:
        value = json.loads(b"".join([*pieces, raw[start:]]).decode("utf-8"))
    except json.JSONDecodeError:
        return json.loads(raw.decode("utf-8"))  # a cut that was no string: json says what is wrong
    filled: list[str] = []
    value = _fill(value, holes, filled)
    return value if sorted(filled) == sorted(holes) else json.loads(raw.decode("utf-8"))


def _long_base64(raw: bytes) -> list[tuple[int, int]]:
    """Where the long base64 strings are: the quotes either side of a probe every LONG/2 bytes
    (every string LONG long holds one)."""
    cuts, view, probe, done = [], memoryview(raw), LONG // 2, 0
    while (end := raw.find(b'"', probe)) >= 0:
        begin = raw.rfind(b'"', done, probe) + 1
        if begin and end - begin >= LONG and _is_base64(view[begin:end]):
            cuts.append((begin, end))
        done, probe = end, max(end + 1, probe + LONG // 2)
    return cuts


def _fill(value: Any, holes: dict[str, str], filled: list[str]) -> Any:
    """`value` with each string that is a hole replaced, in place; `filled` gets those met."""
    if isinstance(value, str):
        if value in holes:
            filled.append(value)
            return holes[value]
        return value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, str | dict | list):
            value[key] = _fill(item, holes, filled)
    return value


def open_blob(blob: bytes, ephemeral: EphemeralKey, server_public_key_b64: str) -> bytes:
    """An output the worker moved to a bucket sealed (`"sealed": true`): nonce + box."""
    return Box(ephemeral, PublicKey(b64decode(server_public_key_b64))).decrypt(blob)

"""Envelope v1: NaCl `Box` (Curve25519 + XSalsa20-Poly1305) around requests and answers.

A client seals its payload with a fresh ephemeral key to the worker's static public key; the
worker seals the answer back to that ephemeral key. Only envelope-level errors travel in
plaintext, because without an opened box there is no key to answer with.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_box_easy_afternm
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from services.core import errors, json_text
from services.core.codec import b64, unb64

NONCE_SIZE = Box.NONCE_SIZE
KEY_SIZE = PublicKey.SIZE
_FIELDS = ("epk", "nonce", "ciphertext")


def keypair() -> tuple[str, str]:
    """A new (private, public) key pair, both base64."""
    key = PrivateKey.generate()
    return b64(bytes(key)), b64(bytes(key.public_key))


def public_key_of(private_key_b64: str) -> str:
    return b64(bytes(PrivateKey(unb64(private_key_b64)).public_key))


def is_envelope(body: Any) -> bool:
    return isinstance(body, dict) and body.get("encrypted") is True


@dataclass(frozen=True)
class Opened:
    """The request's payload, and the box (worker key + the client's ephemeral key) that opened
    it: the same box seals the answer, so the key agreement is done once per request."""

    payload: Any
    box: Box
    epk: bytes
    nonce: bytes


def open_request(body: dict, private_key: PrivateKey | None) -> Opened:
    """Open an encrypted request, or raise the envelope error that explains why not."""
    if private_key is None:
        raise errors.EncryptionUnavailable("this worker has no private key (WORKER_PRIVATE_KEY_B64)")
    missing = [name for name in _FIELDS if not body.get(name)]
    if missing:
        raise errors.MissingEncryptedFields(", ".join(missing))
    try:
        epk = unb64(body["epk"])
        nonce = unb64(body["nonce"])
        ciphertext = unb64(body["ciphertext"])
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise errors.InvalidCiphertext("fields must be standard base64 strings") from None
    if len(epk) != KEY_SIZE:
        raise errors.InvalidCiphertext(f"epk must be {KEY_SIZE} bytes")
    if len(nonce) != NONCE_SIZE:
        raise errors.InvalidCiphertext(f"nonce must be {NONCE_SIZE} bytes")
    try:
        box = Box(private_key, PublicKey(epk))  # a low-order epk fails the key agreement here
        plaintext = box.decrypt(ciphertext, nonce)
    except CryptoError:
        raise errors.InvalidCiphertext("the box does not open with this worker's key") from None
    try:
        payload = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.InvalidJson("the decrypted payload is not UTF-8 JSON") from None
    except RecursionError:
        raise errors.InvalidJson("the decrypted payload is nested too deeply") from None
    return Opened(payload=payload, box=box, epk=epk, nonce=nonce)


def seal(result: Any, box: Box) -> dict:
    """Seal `result` (any JSON value) to the client's ephemeral key with a fresh nonce. The
    binding Box.encrypt calls, called directly: Box.encrypt also joins nonce and ciphertext,
    one more copy of a 17 MB answer that is not sent."""
    nonce = random(NONCE_SIZE)
    ciphertext = crypto_box_easy_afternm(json_text.dumps(result).encode("utf-8"), nonce, box.shared_key())
    return {"encrypted": True, "nonce": b64(nonce), "ciphertext": b64(ciphertext)}


def seal_bytes(data: bytes, box: Box) -> bytes:
    """Seal raw bytes (an output moved to a bucket): nonce followed by the box."""
    return bytes(box.encrypt(data, random(NONCE_SIZE)))


def keep_secret(text: str, private_key: PrivateKey) -> str:
    """`text` sealed to the worker itself, for what the fleet keeps in Redis on a job's behalf
    (its webhook URL): any pod with the worker key opens it, nobody else."""
    return b64(Box(private_key, private_key.public_key).encrypt(text.encode()))


def open_secret(sealed: str, private_key: PrivateKey) -> str:
    return Box(private_key, private_key.public_key).decrypt(unb64(sealed)).decode()

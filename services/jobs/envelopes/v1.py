"""Envelope v1: NaCl `Box` (Curve25519 + XSalsa20-Poly1305) around requests and answers.

A client seals its payload with a fresh ephemeral key to the worker's static public key; the
worker seals the answer back to that ephemeral key. Only envelope-level errors travel in
plaintext, because without an opened box there is no key to answer with.

The worker may hold several keys (a rotation: WORKER_PRIVATE_KEY_B64 the current one,
WORKER_PREVIOUS_KEYS_B64 those still accepted). Each has an id derived from its public key
(`kid_of`), which an envelope may carry (`kid`): the worker then opens with that key, and an
unknown one answers `unknown_key` naming the current kid; without it the keys are tried in
turn, the current first. The answer is sealed with the key that opened the request.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_box_easy_afternm
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from services.core import errors, json_text
from services.core.codec import b64, unb64
from services.core.config import Settings

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


def kid_of(public_key: bytes) -> str:
    """A key's id: the first 16 hex digits of SHA-256 of its 32 public bytes, so that every
    holder of the key (pods, clients) computes the same id without a registry."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """The worker's keys by id, the current one first."""

    keys: tuple[tuple[str, PrivateKey], ...]

    @classmethod
    def of(cls, settings: Settings) -> Keyring | None:
        if not settings.private_key_b64:
            return None
        return cls.from_keys(settings.private_key_b64, *settings.previous_keys)

    @classmethod
    def from_keys(cls, *private_keys_b64: str) -> Keyring:
        keys: dict[str, PrivateKey] = {}
        for text in private_keys_b64:
            key = PrivateKey(unb64(text))
            keys.setdefault(kid_of(bytes(key.public_key)), key)
        return cls(tuple(keys.items()))

    @property
    def current(self) -> PrivateKey:
        return self.keys[0][1]

    @property
    def current_kid(self) -> str:
        return self.keys[0][0]

    def published(self) -> list[dict]:
        """What `/healthz` tells clients: every key's id and public half, and which is current."""
        return [
            {"kid": kid, "public_key_b64": b64(bytes(key.public_key)), "current": number == 0}
            for number, (kid, key) in enumerate(self.keys)
        ]


@dataclass(frozen=True)
class Opened:
    """The request's payload, and the box (worker key + the client's ephemeral key) that opened
    it: the same box seals the answer, so the key agreement is done once per request."""

    payload: Any
    box: Box
    epk: bytes
    nonce: bytes
    kid: str  # of the worker key that opened it
    version: int = 1  # the answer is sealed the way the request came (services.jobs.envelopes.v2)


def open_request(body: dict, keyring: Keyring | None) -> Opened:
    """Open an encrypted request, or raise the envelope error that explains why not."""
    if keyring is None:
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
    box, plaintext, kid = unbox(keyring, body.get("kid"), epk, nonce, ciphertext)
    try:
        payload = json_text.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.InvalidJson("the decrypted payload is not UTF-8 JSON") from None
    except RecursionError:
        raise errors.InvalidJson("the decrypted payload is nested too deeply") from None
    return Opened(payload=payload, box=box, epk=epk, nonce=nonce, kid=kid)


def unbox(keyring: Keyring, kid: Any, epk: bytes, nonce: bytes, ciphertext: bytes) -> tuple[Box, bytes, str]:
    """With the key `kid` names, or each key in turn (the current first) when it names none."""
    candidates = keyring.keys if kid is None else [(k, key) for k, key in keyring.keys if k == kid]
    if not candidates:
        raise errors.UnknownKey(
            f"the envelope's kid is none of this worker's keys; its current key has kid "
            f"{keyring.current_kid} (GET /healthz lists the keys): fetch it and seal again"
        )
    for candidate, key in candidates:
        try:
            box = Box(key, PublicKey(epk))  # a low-order epk fails the key agreement here
            return box, box.decrypt(ciphertext, nonce), candidate
        except CryptoError:
            continue
    raise errors.InvalidCiphertext("the box does not open with this worker's key")


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


def keep_secret(text: str, keyring: Keyring) -> str:
    """`text` sealed to the worker itself, for what the fleet keeps in Redis on a job's behalf
    (its webhook URL): any pod with the worker's keys opens it, nobody else."""
    key = keyring.current
    return b64(Box(key, key.public_key).encrypt(text.encode()))


def open_secret(sealed: str, keyring: Keyring) -> str:
    """What `keep_secret` sealed, with whichever of the worker's keys it was sealed to."""
    for _kid, key in keyring.keys:
        try:
            return Box(key, key.public_key).decrypt(unb64(sealed)).decode()
        except CryptoError:
            continue
    raise errors.InvalidCiphertext("sealed with none of this worker's keys")

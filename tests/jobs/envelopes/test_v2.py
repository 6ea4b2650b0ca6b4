import json
import os
import struct
import tracemalloc

import pytest
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from client.envelope_client import V2_MAGIC, open_answer_v2, plain_request_v2, seal_request_v2
from services.core import errors
from services.core.codec import b64, unb64
from services.jobs.envelopes import v1, v2

PRIVATE, PUBLIC = v1.keypair()
OLD_PRIVATE, OLD_PUBLIC = v1.keypair()
KEYS = v1.Keyring.from_keys(PRIVATE, OLD_PRIVATE)
IMAGE = b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)
WORKFLOW = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}


def opened(body: bytes, keyring=KEYS) -> v1.Opened:
    return v2.open_request(v2.Sealed.parse(body), keyring)


def hand_sealed(plaintext: bytes, public_key: str = PUBLIC, kid: bytes = bytes(8)) -> bytes:
    """A v2 body around any plaintext, as a client of the format would make it."""
    ephemeral, nonce = PrivateKey.generate(), random(24)
    box = Box(ephemeral, PublicKey(unb64(public_key))).encrypt(plaintext, nonce).ciphertext
    return V2_MAGIC + kid + bytes(ephemeral.public_key) + nonce + box


def parts(*chunks: bytes) -> bytes:
    return b"".join(struct.pack(">Q", len(c)) + c for c in chunks)


def test_images_and_image_parameters_travel_as_their_bytes():
    payload = {
        "workflow": WORKFLOW,
        "images": [{"name": "in.png", "image": IMAGE}, {"name": "b.png", "image": IMAGE[:1000]}],
    }
    body, _ = seal_request_v2(payload, PUBLIC)
    assert len(body) < len(IMAGE) + 1000 + 1200  # the images' bytes, not their base64
    request = opened(body)
    assert request.version == 2 and request.kid == KEYS.current_kid
    assert request.payload["images"] == [
        {"name": "in.png", "image": IMAGE},
        {"name": "b.png", "image": IMAGE[:1000]},
    ]
    assert request.payload["workflow"] == WORKFLOW and isinstance(request.payload["ts"], int)
    call, _ = seal_request_v2({"template": "soft-webp", "params": {"image": IMAGE, "width": 64}}, PUBLIC)
    assert opened(call).payload["params"] == {"image": IMAGE, "width": 64}


def test_the_answer_carries_outputs_as_bytes_in_both_shapes():
    request = opened(seal_request_v2({"workflow": WORKFLOW}, PUBLIC)[0])
    outputs = [
        {"node_id": "2", "filename": "a.png", "mime": "image/png", "size": len(IMAGE), "data": b64(IMAGE)},
        {"node_id": "3", "filename": None, "mime": "text/plain", "size": 2, "data": b64(b"hi")},
        {"node_id": "4", "filename": "c.png", "mime": "image/png", "url": "https://b/c", "sealed": True},
    ]
    ephemeral_body, ephemeral = seal_request_v2({"workflow": WORKFLOW}, PUBLIC)
    request = opened(ephemeral_body)
    answer = v2.seal({"status": "ok", "outputs": outputs}, request.box)
    assert answer.startswith(V2_MAGIC) and len(answer) < len(IMAGE) + 2000
    result = open_answer_v2(answer, ephemeral, PUBLIC)
    assert [o.get("data") for o in result["outputs"]] == [IMAGE, b"hi", None]
    assert result["outputs"][2]["url"] == "https://b/c" and "attachment" not in result["outputs"][2]
    shaped = {
        "images": [
            {"filename": "a.png", "type": "base64", "data": b64(IMAGE)},
            {"filename": "c.png", "type": "s3_url", "data": "https://b/c"},
        ]
    }
    result = open_answer_v2(v2.seal(shaped, request.box), ephemeral, PUBLIC)
    assert [i["data"] for i in result["images"]] == [IMAGE, "https://b/c"]


def test_an_error_answer_is_sealed_and_a_plaintext_one_is_read_as_it_is():
    body, ephemeral = seal_request_v2({"workflow": WORKFLOW}, PUBLIC)
    sealed_error = v2.seal({"error": "invalid_workflow: no"}, opened(body).box)
    assert b"invalid_workflow" not in sealed_error
    assert open_answer_v2(sealed_error, ephemeral, PUBLIC) == {"error": "invalid_workflow: no"}
    assert open_answer_v2(b'{"error": "unknown_key: x"}', ephemeral, PUBLIC) == {"error": "unknown_key: x"}


def test_answers_use_a_fresh_nonce_each_time():
    box = opened(seal_request_v2({"workflow": WORKFLOW}, PUBLIC)[0]).box
    assert v2.seal({}, box)[4:28] != v2.seal({}, box)[4:28]


def test_the_kid_picks_the_key_and_no_kid_tries_each():
    assert opened(seal_request_v2({"workflow": WORKFLOW}, OLD_PUBLIC)[0]).kid == KEYS.keys[1][0]
    assert opened(hand_sealed(parts(b"{}"), OLD_PUBLIC)).kid == KEYS.keys[1][0]
    with pytest.raises(errors.UnknownKey):
        opened(seal_request_v2({"workflow": WORKFLOW}, v1.keypair()[1])[0])
    with pytest.raises(errors.InvalidCiphertext):
        opened(hand_sealed(parts(b"{}"), v1.keypair()[1]))


@pytest.mark.parametrize(
    "body",
    [b"", b"CWE2", b"CWE1" + bytes(100), b"CWE2" + bytes(60), b'{"encrypted": true}'],
    ids=["empty", "magic-only", "other-magic", "too-short", "json"],
)
def test_a_body_that_is_no_v2_envelope_is_invalid_ciphertext(body):
    with pytest.raises(errors.InvalidCiphertext):
        opened(body)


def test_a_tampered_box_is_refused():
    body = bytearray(seal_request_v2({"workflow": WORKFLOW}, PUBLIC)[0])
    body[-10] ^= 1
    with pytest.raises(errors.InvalidCiphertext):
        opened(bytes(body))


def test_without_a_private_key_it_is_encryption_unavailable():
    with pytest.raises(errors.EncryptionUnavailable):
        opened(seal_request_v2({"workflow": WORKFLOW}, PUBLIC)[0], None)


@pytest.mark.parametrize(
    ("plaintext", "error", "words"),
    [
        (b"", errors.InvalidRequest, "hold no payload"),
        (b"\x00\x00\x00", errors.InvalidRequest, "end inside a part's length"),
        (struct.pack(">Q", 99) + b"{}", errors.InvalidRequest, "past the end of the parts"),
        (parts(b"{not json"), errors.InvalidJson, "not UTF-8 JSON"),
        (parts(b"\xff\xfe"), errors.InvalidJson, "not UTF-8 JSON"),
        (parts(b"[" * 100_000 + b"]" * 100_000), errors.InvalidJson, "too deeply"),
        (
            parts(b'{"images": [{"name": "a.png", "image": {"attachment": 1}}]}', b"x"),
            errors.InvalidRequest,
            "images[0].image names attachment 1; the envelope holds 1",
        ),
        (
            parts(b'{"images": [{"name": "a.png", "image": {"attachment": true}}]}', b"x"),
            errors.InvalidRequest,
            "images[0].image must be",
        ),
        (
            parts(b'{"images": [{"name": "a.png", "image": {"attachment": 0, "x": 1}}]}', b"x"),
            errors.InvalidRequest,
            "must be",
        ),
        (
            parts(b'{"template": "t", "params": {"p": {"attachment": -1}}}', b"x"),
            errors.InvalidRequest,
            "params.p names attachment -1",
        ),
        (
            parts(
                b'{"images": [{"name": "a.png", "image": {"attachment": 0}}], '
                b'"template": "t", "params": {"p": {"attachment": 0}}}',
                b"x",
            ),
            errors.InvalidRequest,
            "params.p names attachment 0, which images[0].image names already",
        ),
        (parts(b"{}", *[b""] * 1025), errors.InvalidRequest, "more than 1024 attachments"),
    ],
    ids=[
        "empty",
        "short-length",
        "overrun",
        "not-json",
        "not-utf8",
        "deep",
        "past-last",
        "bool",
        "extra-key",
        "negative",
        "named-twice",
        "too-many",
    ],
)
def test_an_opened_box_that_does_not_add_up_is_refused_with_what_is_wrong(plaintext, error, words):
    with pytest.raises(error) as refused:
        opened(hand_sealed(plaintext))
    assert words in refused.value.detail


def test_a_json_body_made_by_hand_with_attachments_opens():
    """The format needs nothing of the bundled client: parts a client of any language writes."""
    head = json.dumps({"workflow": WORKFLOW, "images": [{"name": "in.png", "image": {"attachment": 0}}]})
    request = opened(hand_sealed(parts(head.encode(), IMAGE), kid=bytes.fromhex(KEYS.current_kid)))
    assert request.payload["images"][0]["image"] == IMAGE and "ts" not in request.payload


def test_plain_parts_carry_the_same_payload_and_answer_without_a_box():
    payload = {"workflow": WORKFLOW, "images": [{"name": "in.png", "image": IMAGE}]}
    assert v2.read_plain(plain_request_v2(payload)) == payload
    params = {"image": IMAGE, "width": 64}
    assert v2.read_plain(plain_request_v2(params, template=True), "soft-webp") == {
        "template": "soft-webp",
        "params": params,
    }
    answer = v2.write_plain({"status": "ok", "outputs": [{"node_id": "2", "data": b64(IMAGE)}]})
    assert v2.media_type_of(answer) == v2.PLAIN_MEDIA_TYPE
    assert open_answer_v2(answer)["outputs"] == [{"node_id": "2", "data": IMAGE}]
    with pytest.raises(errors.InvalidRequest):
        v2.read_plain(b'{"workflow": {}}')


def test_a_flood_of_references_or_empty_parts_is_refused_before_it_costs_memory():
    """A 1 MiB attachment named 200 times made 200 copies (2 GiB from a 10 MiB body); 64 MiB of
    empty parts (8 Mi of them) made a list of 8 Mi views. Both are refused after 1,025 parts or
    at the second reference, whatever follows."""
    blob = os.urandom(1 << 20)
    refs = json.dumps(
        {
            "workflow": WORKFLOW,
            "images": [{"name": f"{i}.png", "image": {"attachment": 0}} for i in range(200)],
        }
    )
    referenced = v2.PLAIN_MAGIC + parts(refs.encode(), blob)
    empty = v2.PLAIN_MAGIC + bytes(64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(errors.InvalidRequest, match="names already"):
            v2.read_plain(referenced)
        with pytest.raises(errors.InvalidRequest, match="more than 1024 attachments"):
            v2.read_plain(empty)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the bodies themselves were made before tracing began

import base64
import json

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from client.envelope_client import open_answer, seal_request
from services.core import errors
from services.jobs.envelopes import v1

PRIVATE, PUBLIC = v1.keypair()
KEY = v1.Keyring.from_keys(PRIVATE)
PAYLOAD = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}, "images": []}


def test_round_trip_with_the_client_module():
    request, ephemeral = seal_request(PAYLOAD, PUBLIC)
    opened = v1.open_request(request, KEY)
    assert {k: v for k, v in opened.payload.items() if k != "ts"} == PAYLOAD  # the client adds ts
    answer = v1.seal({"status": "ok"}, opened.box)
    assert set(answer) == {"encrypted", "nonce", "ciphertext"}
    assert open_answer(answer, ephemeral, PUBLIC) == {"status": "ok"}


def test_an_envelope_made_the_way_existing_clients_make_it_opens():
    """Fresh ephemeral key, separate nonce, box output without the nonce, standard base64."""
    eph = PrivateKey.generate()
    nonce = bytes(range(24))
    sealed = Box(eph, PublicKey(base64.b64decode(PUBLIC))).encrypt(
        json.dumps({"1": {"class_type": "X", "inputs": {}}}).encode(), nonce
    )
    body = {
        "encrypted": True,
        "epk": base64.b64encode(bytes(eph.public_key)).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
    }
    assert v1.open_request(body, KEY).payload == {"1": {"class_type": "X", "inputs": {}}}


def test_answers_use_a_fresh_nonce_each_time():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    box = v1.open_request(request, KEY).box
    assert v1.seal({}, box)["nonce"] != v1.seal({}, box)["nonce"]


def test_tampered_ciphertext_is_refused():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    raw = bytearray(base64.b64decode(request["ciphertext"]))
    raw[5] ^= 1
    request["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(errors.InvalidCiphertext):
        v1.open_request(request, KEY)


def test_wrong_worker_key_is_refused():
    request, _ = seal_request(PAYLOAD, v1.keypair()[1])
    with pytest.raises(errors.UnknownKey):  # its kid names a key this worker never had
        v1.open_request(request, KEY)
    with pytest.raises(errors.InvalidCiphertext):
        v1.open_request({k: v for k, v in request.items() if k != "kid"}, KEY)


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_bad_base64_is_invalid_ciphertext(field):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request[field] = "***not base64***"
    with pytest.raises(errors.InvalidCiphertext, match="base64"):
        v1.open_request(request, KEY)


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_fields_of_the_wrong_type_are_invalid_ciphertext(field):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request[field] = 12345
    with pytest.raises(errors.InvalidCiphertext):
        v1.open_request(request, KEY)


@pytest.mark.parametrize("size", [12, 23, 25])
def test_wrong_nonce_length(size):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request["nonce"] = base64.b64encode(b"n" * size).decode()
    with pytest.raises(errors.InvalidCiphertext, match="nonce must be 24 bytes"):
        v1.open_request(request, KEY)


def test_wrong_epk_length():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request["epk"] = base64.b64encode(b"k" * 31).decode()
    with pytest.raises(errors.InvalidCiphertext, match="epk must be 32 bytes"):
        v1.open_request(request, KEY)


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_missing_fields(field):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    del request[field]
    with pytest.raises(errors.MissingEncryptedFields, match=field) as info:
        v1.open_request(request, KEY)
    assert info.value.message.startswith("missing encrypted fields")


def test_a_worker_without_a_key_says_so():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    with pytest.raises(errors.EncryptionUnavailable):
        v1.open_request(request, None)


def test_public_key_of_matches_keypair():
    assert v1.public_key_of(PRIVATE) == PUBLIC


def test_client_passes_plaintext_errors_through():
    _, ephemeral = seal_request(PAYLOAD, PUBLIC)
    assert open_answer({"error": "invalid ciphertext: x"}, ephemeral, PUBLIC) == {
        "error": "invalid ciphertext: x"
    }


# Several keys: a rotation ---------------------------------------------------------------------
OLD_PRIVATE, OLD_PUBLIC = v1.keypair()
ROTATED = v1.Keyring.from_keys(PRIVATE, OLD_PRIVATE)  # the new key current, the old still accepted


def without_kid(request):
    return {k: v for k, v in request.items() if k != "kid"}


@pytest.mark.parametrize("strip_kid", [False, True])
def test_an_envelope_sealed_to_a_previous_key_opens_and_its_answer_opens_with_that_key(strip_kid):
    request, ephemeral = seal_request(PAYLOAD, OLD_PUBLIC)
    assert request["kid"] == v1.kid_of(base64.b64decode(OLD_PUBLIC))
    opened = v1.open_request(without_kid(request) if strip_kid else request, ROTATED)
    assert opened.kid == v1.kid_of(base64.b64decode(OLD_PUBLIC))
    answer = v1.seal({"status": "ok"}, opened.box)
    assert open_answer(answer, ephemeral, OLD_PUBLIC) == {"status": "ok"}


def test_a_removed_key_is_refused_as_a_key_never_held():
    request, _ = seal_request(PAYLOAD, OLD_PUBLIC)
    with pytest.raises(errors.UnknownKey) as unknown:
        v1.open_request(request, KEY)  # the old key was removed
    assert unknown.value.http_status == 400 and KEY.current_kid in unknown.value.detail
    with pytest.raises(errors.InvalidCiphertext):  # no kid: as any envelope that does not open
        v1.open_request(without_kid(request), KEY)


def test_the_key_list_names_the_current_key_first():
    assert [(k["kid"], k["public_key_b64"], k["current"]) for k in ROTATED.published()] == [
        (v1.kid_of(base64.b64decode(PUBLIC)), PUBLIC, True),
        (v1.kid_of(base64.b64decode(OLD_PUBLIC)), OLD_PUBLIC, False),
    ]
    assert v1.Keyring.from_keys(PRIVATE, PRIVATE).keys == KEY.keys  # a key listed twice is one

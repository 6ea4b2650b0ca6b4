import base64
import json

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from client.envelope_client import open_answer, seal_request
from services.core import errors
from services.jobs import envelope

PRIVATE, PUBLIC = envelope.keypair()
KEY = PrivateKey(base64.b64decode(PRIVATE))
PAYLOAD = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}, "images": []}


def test_round_trip_with_the_client_module():
    request, ephemeral = seal_request(PAYLOAD, PUBLIC)
    opened = envelope.open_request(request, KEY)
    assert {k: v for k, v in opened.payload.items() if k != "ts"} == PAYLOAD  # the client adds ts
    answer = envelope.seal({"status": "ok"}, opened.box)
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
    assert envelope.open_request(body, KEY).payload == {"1": {"class_type": "X", "inputs": {}}}


def test_answers_use_a_fresh_nonce_each_time():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    box = envelope.open_request(request, KEY).box
    assert envelope.seal({}, box)["nonce"] != envelope.seal({}, box)["nonce"]


def test_tampered_ciphertext_is_refused():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    raw = bytearray(base64.b64decode(request["ciphertext"]))
    raw[5] ^= 1
    request["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(errors.InvalidCiphertext):
        envelope.open_request(request, KEY)


def test_wrong_worker_key_is_refused():
    request, _ = seal_request(PAYLOAD, envelope.keypair()[1])
    with pytest.raises(errors.InvalidCiphertext):
        envelope.open_request(request, KEY)


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_bad_base64_is_invalid_ciphertext(field):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request[field] = "***not base64***"
    with pytest.raises(errors.InvalidCiphertext, match="base64"):
        envelope.open_request(request, KEY)


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_fields_of_the_wrong_type_are_invalid_ciphertext(field):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request[field] = 12345
    with pytest.raises(errors.InvalidCiphertext):
        envelope.open_request(request, KEY)


@pytest.mark.parametrize("size", [12, 23, 25])
def test_wrong_nonce_length(size):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request["nonce"] = base64.b64encode(b"n" * size).decode()
    with pytest.raises(errors.InvalidCiphertext, match="nonce must be 24 bytes"):
        envelope.open_request(request, KEY)


def test_wrong_epk_length():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    request["epk"] = base64.b64encode(b"k" * 31).decode()
    with pytest.raises(errors.InvalidCiphertext, match="epk must be 32 bytes"):
        envelope.open_request(request, KEY)


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_missing_fields(field):
    request, _ = seal_request(PAYLOAD, PUBLIC)
    del request[field]
    with pytest.raises(errors.MissingEncryptedFields, match=field) as info:
        envelope.open_request(request, KEY)
    assert info.value.message.startswith("missing encrypted fields")


def test_a_worker_without_a_key_says_so():
    request, _ = seal_request(PAYLOAD, PUBLIC)
    with pytest.raises(errors.EncryptionUnavailable):
        envelope.open_request(request, None)


def test_public_key_of_matches_keypair():
    assert envelope.public_key_of(PRIVATE) == PUBLIC


def test_client_passes_plaintext_errors_through():
    _, ephemeral = seal_request(PAYLOAD, PUBLIC)
    assert open_answer({"error": "invalid ciphertext: x"}, ephemeral, PUBLIC) == {
        "error": "invalid ciphertext: x"
    }

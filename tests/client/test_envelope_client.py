"""The client's JSON bodies: the same bytes json.dumps makes, without its scan of big base64."""

import base64
import json
import os

import pytest

from client import envelope_client
from client.envelope_client import envelope_json, open_answer, payload_json, read_answer, seal_request
from services.core import json_text
from services.jobs import envelopes
from services.jobs.envelopes import v1

PRIVATE, PUBLIC = envelopes.keypair()
IMAGE = base64.b64encode(os.urandom(300_000)).decode()


@pytest.mark.parametrize(
    "payload",
    [
        {
            "workflow": {"1": {"inputs": {"image": "a.png", "text": 'é " \\ \n'}}},
            "images": [{"name": "a.png", "image": IMAGE}],
        },
        {"images": [{"name": "a", "image": IMAGE}, {"name": "b", "image": IMAGE[:-4]}], "workflow": {}},
        {"workflow": {}, "images": [{"name": "a", "image": IMAGE}, {"name": "b", "url": "https://x/b.png"}]},
        {"workflow": {}, "images": [{"name": "a", "image": 'QUJD"' + IMAGE}]},
        {"workflow": {}, "images": [{"name": "a", "image": "data:image/png;base64,\n" + IMAGE}]},
        {"workflow": {}, "images": []},
        {"workflow": {}},
        [1, "two"],
    ],
)
def test_payload_json_is_json_dumps(payload):
    assert payload_json(payload) == json.dumps(payload).encode("utf-8")


def test_the_envelope_body_is_the_envelope_as_json_and_the_worker_opens_it():
    payload = {"workflow": {"1": {}}, "images": [{"name": "a.png", "image": IMAGE}]}
    sealed, _ = seal_request(payload, PUBLIC)
    body = json.loads(envelope_json(sealed))
    assert body == sealed
    assert v1.open_request(body, envelopes.Keyring.from_keys(PRIVATE)).payload["images"] == payload["images"]


ANSWERS = [
    {"encrypted": True, "nonce": "bm9uY2U=", "ciphertext": IMAGE},
    {"status": "ok", "outputs": [{"node_id": "9", "data": IMAGE}, {"node_id": "9", "data": IMAGE[:-4]}]},
    {"status": "ok", "outputs": [{"text": 'é \\ " \n' + IMAGE, "data": "data:x;base64," + IMAGE}]},
    {"error": "invalid_json: the body is not valid JSON"},
    {"numbers": list(range(100_000)), "a": "b"},
]


@pytest.mark.parametrize("answer", ANSWERS)
@pytest.mark.parametrize("fast", [True, False])
def test_reading_an_answer_gives_what_json_loads_gives(answer, fast, monkeypatch):
    monkeypatch.setattr(envelope_client, "FAST_BASE64", fast)
    raw = json.dumps(answer, separators=(",", ":")).encode()
    assert read_answer(raw) == answer


def test_an_answer_that_is_no_json_fails_as_json_loads_fails():
    for raw in [b'{"data": "' + IMAGE.encode() + b'",}', b'{"data": "' + IMAGE.encode() + b'"', b"<html>"]:
        with pytest.raises(ValueError):
            read_answer(raw)


def test_an_answer_holding_the_marker_is_still_read_right(monkeypatch):
    monkeypatch.setattr(envelope_client, "random", lambda n: b"\x01" * n)
    answer = {"a": "z" + "01" * 16 + "0", "outputs": [{"data": IMAGE}]}
    assert read_answer(json.dumps(answer).encode()) == answer


def test_the_worker_s_sealed_answer_opens_to_the_result():
    sealed, ephemeral = seal_request({"workflow": {}}, PUBLIC)
    opened = v1.open_request(json.loads(envelope_json(sealed)), envelopes.Keyring.from_keys(PRIVATE))
    result = {"status": "ok", "outputs": [{"data": IMAGE}]}
    body = json_text.dumps(v1.seal(result, opened.box)).encode()
    assert open_answer(read_answer(body), ephemeral, PUBLIC) == result


def test_envelope_v2_moves_only_bytes_and_stamps_every_call():
    """bytes, bytearray and memoryview images and image parameters become attachments; base64
    text, URLs and other parameters stay in the JSON; template calls get `ts` like workflows."""
    raw = os.urandom(1000)
    payload = {
        "workflow": {},
        "images": [
            {"name": "a", "image": raw},
            {"name": "b", "image": bytearray(raw[:10])},
            {"name": "c", "image": IMAGE[:8]},
            {"name": "d", "url": "https://x/d.png"},
        ],
    }
    head, attachments = envelope_client._detached(envelope_client._stamped(payload))
    assert [i.get("image") for i in head["images"]] == [{"attachment": 0}, {"attachment": 1}, IMAGE[:8], None]
    assert attachments == [raw, raw[:10]] and "ts" in head
    call = {"template": "t", "params": {"image": memoryview(raw), "width": 8}}
    head, attachments = envelope_client._detached(envelope_client._stamped(call))
    assert head["params"] == {"image": {"attachment": 0}, "width": 8} and attachments == [raw]
    assert "ts" in head and "ts" not in call


def test_an_answer_v2_whose_parts_do_not_add_up_is_refused():
    for opened in (b"\x00\x00\x00\x00\x00\x00\x00\x09{}", b"\x00\x00\x00", b""):
        with pytest.raises(ValueError):
            envelope_client._parts(opened)

"""The client's JSON bodies: the same bytes json.dumps makes, without its scan of big base64."""

import base64
import json
import os

import pytest

from client.envelope_client import envelope_json, payload_json, seal_request
from services.jobs import envelope

PRIVATE, PUBLIC = envelope.keypair()
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
    assert (
        envelope.open_request(body, envelope.Keyring.from_keys(PRIVATE)).payload["images"]
        == payload["images"]
    )

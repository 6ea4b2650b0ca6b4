import base64
import json
import os

import pytest

from services.core import codec, json_text

BIG = base64.b64encode(os.urandom(json_text.SPLICED)).decode()


def compact(value):
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize(
    "value",
    [
        {"status": "ok", "outputs": [{"node_id": "9", "data": BIG, "size": 3}, {"data": BIG[:-4] + "AAAA"}]},
        {"encrypted": True, "nonce": "bm9uY2U=", "ciphertext": BIG},
        [BIG, {"nested": [BIG, 1.5, None, True]}, "small"],
        {"quoted": 'a"b' + "x" * json_text.SPLICED, "escaped": "\\" + "y" * json_text.SPLICED},
        {"control": "\n" + "z" * json_text.SPLICED, "unicode": "é" + "w" * json_text.SPLICED},
        {"delete": "\x7f" + "v" * json_text.SPLICED, 1: "int key", "t": (BIG, 2)},
        "just a string",
        BIG,
    ],
)
def test_the_text_is_what_json_dumps_makes(value):
    assert json_text.dumps(value) == compact(value)


def test_a_value_that_contains_the_marker_still_comes_out_right(monkeypatch):
    monkeypatch.setattr(json_text.secrets, "token_hex", lambda n: "fixed")
    value = {"a": "fixed", "b": BIG}
    assert json_text.dumps(value) == compact(value)


def test_base64_the_codec_made_is_spliced_as_it_is():
    data = os.urandom(json_text.SPLICED)
    value = {"outputs": [{"data": codec.b64(data)}], "ciphertext": codec.b64(data[:-1])}
    assert json_text.dumps(value) == compact(value)

import base64
import json
import os

import pytest

from services.core import codec, errors, json_text

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


def utf8(value, **dumps):
    return json.dumps(value, **dumps).encode("utf-8")


LOADS = [
    utf8({"encrypted": True, "kid": "k", "epk": "ZXBr", "nonce": "bm9uY2U=", "ciphertext": BIG}),
    utf8({"workflow": {"1": {"inputs": {"text": 'é " \\ \n'}}}, "images": [{"name": "a", "image": BIG}]}),
    utf8({"images": [{"image": "data:image/png;base64," + BIG}, {"image": BIG[:-4]}, {"image": BIG}]}),
    utf8([BIG, {"nested": [BIG, 1.5, None, True]}, "small"], indent=2),
    utf8(BIG),
    utf8({BIG: 1, "b": BIG}),  # a long key stays json's
    utf8({"a": "x", "numbers": list(range(json_text.SPLICED // 4)), "b": "y"}),  # long, but no string
    utf8({"escaped": "\\" + BIG, "quoted": 'a"' + BIG, "unicode": "é" + BIG, "uri": "data:x\\," + BIG}),
    utf8({"text": "word " * json_text.SPLICED, "padded": BIG[:100] + "=" + BIG}),
    utf8({"uri": "data:" + "x" * 300 + ";base64," + BIG, "tab": "data:\t," + BIG}),  # heads json reads
    b'{"a": "\\"' + BIG.encode() + b'"}',  # an escaped quote just before a long stretch
]


@pytest.mark.parametrize("raw", LOADS)
def test_reading_gives_what_json_loads_gives(raw):
    assert json_text.loads(raw) == json.loads(raw.decode("utf-8"))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "' + BIG.encode() + b'", }',  # a stray comma after the long string
        b'{"a": "' + BIG.encode() + b'" "b": 1}',  # a missing comma
        b'{"a": "' + BIG[:100].encode() + b"\n" + BIG.encode() + b'"}',  # a raw control character
        b'{"a": "' + BIG.encode() + b'", "b": "\xff"}',  # not UTF-8 beside it
        b'{"a": [1, "' + BIG.encode() + b'"',  # cut short
    ],
)
def test_bad_json_fails_as_json_loads_fails(raw):
    try:
        json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        expected = type(exc)
    with pytest.raises(expected):
        json_text.loads(raw)


def test_a_body_that_holds_the_marker_is_still_read_right(monkeypatch):
    monkeypatch.setattr(json_text.secrets, "token_hex", lambda n: "fixed")
    raw = utf8({"a": "zfixed0", "b": BIG})
    assert json_text.loads(raw) == {"a": "zfixed0", "b": BIG}


def test_json_that_would_take_twenty_times_its_size_is_refused_before_it_is_parsed():
    """`[],` is 3 bytes of text and ~60 of objects: a 64 MB body of them took 1.6 GB."""
    many = b"[" + b"[]," * json_text.MAX_CONTAINERS + b"[]]"
    with pytest.raises(errors.InvalidJson, match="more than 1000000 lists and objects"):
        json_text.loads(many)
    with pytest.raises(errors.InvalidJson):  # base64 beside them changes nothing
        json_text.loads(b'{"image": "' + b"QUFB" * 40_000 + b'", "x": ' + many + b"}")
    fine = b"[" + b"[]," * (json_text.MAX_CONTAINERS - 2) + b"[]]"
    assert len(json_text.loads(fine)) == json_text.MAX_CONTAINERS - 1
    numbers = b"[" + b"1.5," * (json_text.MAX_ITEMS + 1) + b"1]"
    with pytest.raises(errors.InvalidJson, match="more than 4000000 items"):
        json_text.loads(numbers)

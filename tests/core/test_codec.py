"""Base64 through pybase64: the same text and bytes as the standard library, the same refusals."""

import base64
import os

import pytest

from services.core import codec


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1000, 3 * 1024 * 1024 + 2])
def test_the_text_and_the_bytes_are_the_standard_library_s(size):
    data = os.urandom(size)
    text = codec.b64(data)
    assert text == base64.b64encode(data).decode()
    assert codec.unb64(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "QQ=",
        "QQ",
        "Q===",
        "=",
        "QQ==QQ==",
        "QU JD",
        "QUJD\n",
        "QUJD!",
        "QUJ\u00e9",
        "A" * 4000 + "eA==" + "A" * 4000,
    ],
)
def test_what_the_standard_library_refuses_is_refused(text):
    with pytest.raises(ValueError):
        base64.b64decode(text, validate=True)
    with pytest.raises(ValueError):
        codec.unb64(text)


def test_only_text_is_decoded():
    with pytest.raises(ValueError):
        codec.unb64(b"QUJD")


@pytest.mark.parametrize("size", [3, 3 * 256 * 1024, 3 * 256 * 1024 + 5, 2_000_000])
def test_base64_is_known_as_such_in_every_form(size):
    text = codec.b64(os.urandom(size))
    assert (
        codec.is_base64(text)
        and codec.is_base64(text.encode())
        and codec.is_base64(memoryview(text.encode()))
    )


@pytest.mark.parametrize("bad", ['"', "\\", "\n", "\x7f", " ", "é", "-"])
@pytest.mark.parametrize("where", [0, 256 * 1024 + 7, -1])
def test_a_character_json_would_escape_anywhere_is_not_base64(bad, where):
    text = list(codec.b64(os.urandom(600_000)))
    text[where] = bad
    assert not codec.is_base64("".join(text))

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

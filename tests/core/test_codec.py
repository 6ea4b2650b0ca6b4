"""Base64 in slices: the same text and bytes as a whole call, the same refusals."""

import base64

import pytest

from services.core import codec


@pytest.mark.parametrize(
    "size",
    [0, 1, codec.B64_SLICE - 1, codec.B64_SLICE, codec.B64_SLICE + 1, 3 * codec.B64_SLICE + 2],
)
def test_sliced_base64_equals_plain_base64(size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert codec.b64(data) == base64.b64encode(data).decode()


def test_a_large_base64_text_decodes_in_slices_to_the_same_bytes():
    data = bytes(range(256)) * (codec.UNB64_SLICE // 128 + 7) + b"!"  # several slices, padded
    text = base64.b64encode(data).decode()
    assert len(text) > 2 * codec.UNB64_SLICE and text.endswith("=")
    assert codec.unb64(text) == data


@pytest.mark.parametrize("where", [codec.UNB64_SLICE - 4, codec.UNB64_SLICE + 4])
def test_padding_inside_a_large_text_is_refused_as_a_whole_decode_would_refuse_it(where):
    chunk = base64.b64encode(b"x").decode()  # 'eA==': padded
    text = "A" * where + chunk + "A" * codec.UNB64_SLICE
    with pytest.raises(ValueError):
        base64.b64decode(text, validate=True)
    with pytest.raises(ValueError):
        codec.unb64(text)

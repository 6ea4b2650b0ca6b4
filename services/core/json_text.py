"""JSON of bodies that carry large base64 strings (images, outputs, ciphertext), both ways.

json's C scanner and encoder walk a string a character at a time (~0.4 GB/s here: ~40 ms for
the 17 MB ciphertext of a 12.6 MB image), and under gunicorn's gevent worker the hub shares the
GIL with the pool thread doing it (docs/runtime.md): every probe waits. Base64 needs no escaping,
so a long base64 string is spliced into the text of the rest when writing, and cut out of the
text by its two quotes when reading; json handles what is left, which is small.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from services.core import errors
from services.core.codec import is_base64

SPLICED = 64 * 1024  # shorter strings are encoded with the rest
MAX_CONTAINERS = 1_000_000  # `[` and `{` a body's JSON may hold: see _parsed
MAX_ITEMS = 4_000_000  # and `,`: items of its lists and objects


def dumps(value: Any) -> str:
    """The same JSON as json.dumps(value, separators=(",", ":"))."""
    hole = secrets.token_hex(16)
    spliced: list[str] = []
    text = json.dumps(_hollow(value, hole, spliced), separators=(",", ":"))
    if not spliced:
        return text
    parts = text.split(f'"{hole}"')
    if len(parts) != len(spliced) + 1:  # the random marker stood in the value itself
        return json.dumps(value, separators=(",", ":"))
    pieces = [parts[0]]
    for string, part in zip(spliced, parts[1:], strict=True):
        pieces += ['"', string, '"', part]
    return "".join(pieces)


def _hollow(value: Any, hole: str, spliced: list[str]) -> Any:
    """`value` with each long verbatim string replaced by `hole`, in json.dumps's order."""
    if isinstance(value, str):
        if _verbatim(value):
            spliced.append(value)
            return hole
        return value
    if isinstance(value, dict):
        return {key: _hollow(item, hole, spliced) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_hollow(item, hole, spliced) for item in value]
    return value


def _verbatim(text: str) -> bool:
    """Long, and its JSON is itself in quotes: base64."""
    return len(text) >= SPLICED and is_base64(text)


def loads(raw: bytes) -> Any:
    """json.loads(raw.decode("utf-8")), the same value and errors: long base64 strings are cut
    out of the bytes by a search for their quotes (~1 ms per 17 MB), each copied once into its
    string, and put back into what json made of the rest. A long stretch between two quotes that
    is not base64 (text with escapes, a run of numbers between two strings) is left to json."""
    cuts = _base64_strings(raw)
    if not cuts:
        return _parsed(raw)
    hole, view = "z" + secrets.token_hex(16), memoryview(raw)
    pieces, start, holes = [], 0, {}
    for number, (begin, end) in enumerate(cuts):
        pieces += [raw[start:begin], f"{hole}{number}".encode()]
        holes[f"{hole}{number}"] = str(view[begin:end], "ascii")
        start = end
    pieces.append(raw[start:])
    try:
        value = _parsed(b"".join(pieces))
    except json.JSONDecodeError:
        return _parsed(raw)  # a cut that was no string: json says what is wrong
    filled: list[str] = []
    value = _fill(value, holes, filled)
    if sorted(filled) != sorted(holes):  # a hole that was no whole string value, or one twice
        return _parsed(raw)
    return value


def _parsed(text: bytes) -> Any:
    """json.loads, bounded: json makes ~60 bytes of every 3 bytes of `[],` and ~40 of every 4
    of `1.5,` (64 MB bodies of them took the API process to 1.6 and 0.8 GB), so a text with more
    than MAX_CONTAINERS lists and objects or MAX_ITEMS items is refused before it is parsed
    (counting costs a few % of parsing; a big workflow has tens of thousands of each)."""
    if text.count(b"[") + text.count(b"{") > MAX_CONTAINERS:
        raise errors.InvalidJson(f"the JSON holds more than {MAX_CONTAINERS} lists and objects")
    if text.count(b",") > MAX_ITEMS:
        raise errors.InvalidJson(f"the JSON holds more than {MAX_ITEMS} items")
    return json.loads(text.decode("utf-8"))


def _base64_strings(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of each long base64 stretch between two quotes. A probe every SPLICED/2
    bytes meets every stretch SPLICED long or more, and the quotes either side of a probe are
    two searches, so the bytes are searched through once whatever they hold."""
    cuts: list[tuple[int, int]] = []
    view, step, probe, done = memoryview(raw), SPLICED // 2, SPLICED // 2, 0
    while (end := raw.find(b'"', probe)) >= 0:
        begin = raw.rfind(b'"', done, probe) + 1
        if begin and end - begin >= SPLICED and _base64_bytes(view[begin:end]):
            cuts.append((begin, end))
        done, probe = end, max(end + 1, probe + step)
    return cuts


def _base64_bytes(view: memoryview) -> bool:
    """Base64, or a data URI of base64 (the forms an input image takes)."""
    if view[:5] == b"data:":
        head, comma, _ = bytes(view[:256]).partition(b",")
        if not comma or not head.isascii() or not head.decode().isprintable() or b"\\" in head:
            return False
        view = view[len(head) + 1 :]
    return is_base64(view)


def _fill(value: Any, holes: dict[str, str], filled: list[str]) -> Any:
    """`value` with each string that is a hole replaced by its text, in place; `filled` gets
    the holes met."""
    if isinstance(value, str):
        if value in holes:
            filled.append(value)
            return holes[value]
        return value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, str | dict | list):
            value[key] = _fill(item, holes, filled)
    return value


def size_hint(value: Any) -> int:
    """Roughly how much text a value becomes: its longest strings (images, ciphertext) dominate;
    enough for `offload` to tell a large body from a small one without encoding it."""
    if isinstance(value, dict):
        return sum(size_hint(v) for v in value.values())
    if isinstance(value, list):
        return sum(size_hint(v) for v in value)
    return len(value) if isinstance(value, str) else 8

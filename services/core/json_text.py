"""Compact JSON text of answers that carry large base64 strings (outputs, ciphertext).

json.dumps holds the GIL for its whole run, ~16 ms for a 10 MB string, and under gunicorn's
gevent worker the hub shares that GIL with the pool thread doing it (docs/runtime.md): every probe
waits. A long string that needs no escaping (base64 never does) is spliced into the text of the
rest instead, checked with short searches between which the hub gets to run (none at all for
the base64 services.core.codec made).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from services.core.codec import Base64Text

SPLICED = 64 * 1024  # shorter strings are encoded with the rest


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
    """Long, and its JSON is itself in quotes: base64 that services.core.codec made, or ASCII
    without a quote, a backslash or a character json.dumps escapes (one memchr-like search
    each, ~1 ms per 17 MB, where str.isprintable took ~37 ms)."""
    if len(text) < SPLICED:
        return False
    if isinstance(text, Base64Text):
        return True
    return text.isascii() and not any(char in text for char in _ESCAPED)


_ESCAPED = ('"', "\\", "\x7f", *map(chr, range(32)))


def size_hint(value: Any) -> int:
    """Roughly how much text a value becomes: its longest strings (images, ciphertext) dominate;
    enough for `offload` to tell a large body from a small one without encoding it."""
    if isinstance(value, dict):
        return sum(size_hint(v) for v in value.values())
    if isinstance(value, list):
        return sum(size_hint(v) for v in value)
    return len(value) if isinstance(value, str) else 8

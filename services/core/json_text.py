"""Compact JSON text of answers that carry large base64 strings (outputs, ciphertext).

json.dumps holds the GIL for its whole run, ~16 ms for a 10 MB string, and under gunicorn's
gevent worker the hub shares that GIL with the pool thread doing it (docs/runtime.md): every probe
waits. A long string that needs no escaping (base64 never does) is spliced into the text of the
rest instead, checked and copied in slices between which the hub gets to run.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from services.core.codec import Base64Text

SPLICED = 64 * 1024  # shorter strings are encoded with the rest
CHECK_SLICE = 1024 * 1024


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
    """Long, and its JSON is itself in quotes: base64 that services.core.codec made, or printable
    ASCII without a quote or backslash (a scan of ~2 ms per MB, which codec's text is spared)."""
    if len(text) < SPLICED:
        return False
    if isinstance(text, Base64Text):
        return True
    return (
        text.isascii()
        and '"' not in text
        and "\\" not in text
        and all(text[i : i + CHECK_SLICE].isprintable() for i in range(0, len(text), CHECK_SLICE))
    )

"""How often ComfyUI was started: the launcher counts each start in a file under RUN_DIR, the
worker reads it to notice a restart (warm-up, metrics) without asking supervisord."""

from __future__ import annotations

import os


def read(path: str) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def count(path: str) -> None:
    """One more start; the file is replaced whole, never seen half-written."""
    with open(path + ".tmp", "w", encoding="ascii") as handle:
        handle.write(f"{read(path) + 1}\n")
    os.replace(path + ".tmp", path)

"""The model volume: where a model of a type goes, and what is there.

Type names are ComfyUI's folder names (model_folders.FOLDERS, legacy `clip`/`unet` included),
so a finished download is in a folder ComfyUI's loaders already read. Names are checked so
that nothing lands outside the model root; partial downloads are hidden `.part` files and are
never listed.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from typing import Any

from services.core import errors
from services.models import model_folders

PARTIAL_SUFFIX = ".part"
CHUNK = 1024 * 1024
TYPES: tuple[str, ...] = tuple(
    dict.fromkeys(f for folders in model_folders.FOLDERS.values() for f in folders)
)


def check_type(model_type: object) -> str:
    if model_type not in TYPES:
        raise errors.InvalidTarget(
            f"unknown model type {str(model_type)[:40]!r}; use one of: {', '.join(TYPES)}"
        )
    return str(model_type)


def check_name(name: object) -> str:
    """A relative file name inside a type folder; subfolders allowed, nothing that escapes."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise errors.InvalidTarget("the file name must be a non-empty string of at most 255 characters")
    if unicodedata.normalize("NFC", name) != name or any(not c.isprintable() or c == "\\" for c in name):
        raise errors.InvalidTarget("the file name has control, backslash or non-normalized characters")
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise errors.InvalidTarget("the file name must be relative, without '..', empty or hidden parts")
    return name


def target_path(model_dir: str, model_type: str, name: str) -> str:
    """The absolute path of a model file, after checking that no symlink leads it out of the root."""
    folder = os.path.join(model_dir, check_type(model_type))
    path = os.path.join(folder, check_name(name))
    root = os.path.realpath(model_dir)
    parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([parent, root]) != root or os.path.islink(path):
        raise errors.InvalidTarget("the target leaves the model root through a symlink")
    return path


def partial_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{PARTIAL_SUFFIX}")


def lock_path(path: str) -> str:
    """The transfer lock beside the target (services.models.volume_lock), hidden like the partial."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.lock")


def listing(model_dir: str, model_type: str | None = None) -> dict[str, list[dict]]:
    """Every type folder with its files (subfolders as `sub/name`), size and mtime."""
    types = (check_type(model_type),) if model_type is not None else TYPES
    result: dict[str, list[dict]] = {}
    for kind in types:
        folder = os.path.join(model_dir, kind)
        entries = []
        for current, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = os.path.join(current, name)
                stat = os.stat(path)
                entries.append(
                    {"name": os.path.relpath(path, folder), "size": stat.st_size, "mtime": int(stat.st_mtime)}
                )
        result[kind] = entries
    return result


def hash_into(digest: Any, path: str) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    hash_into(digest, path)
    return digest.hexdigest()

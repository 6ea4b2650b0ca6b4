"""Who may call what: the API keys, their scopes and their limits (README: Access).

`API_KEY` alone is one key with every scope. `API_KEYS_FILE` (a file the platform mounts as a
secret) names more, one per line, each stored as the SHA-256 of its token, never the token:

    # name   hash                      scopes        limits (optional)
    ci       sha256:<64 hex digits>    jobs          jobs=4
    team-a   sha256:<64 hex digits>    jobs,models   jobs=8 download_gb_per_day=50
    ops      sha256:<64 hex digits>    admin,metrics

A token is long and random (`make keygen`), so one round of SHA-256 is enough to store it. The
table is keyed by that hash: how long a lookup takes depends on the hash of what was sent, never
on how much of a real token it matches. The file is read again when it changes (one `stat` per
request); a bad edit keeps the keys in force and says why.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass

from services.core.config import ConfigError, Settings

log = logging.getLogger("worker.access")
SCOPES = ("jobs", "models", "admin", "metrics")
TOKEN_PREFIX = "cwk_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_LIMITS = ("jobs", "download_gb_per_day")


@dataclass(frozen=True)
class Key:
    name: str
    scopes: frozenset[str]
    max_jobs: int | None = None  # its jobs running or queued at once
    download_bytes_per_day: int | None = None  # what its downloads may write per UTC day


EVERY_SCOPE = frozenset(SCOPES)
SINGLE = Key("API_KEY", EVERY_SCOPE)  # API_KEY alone
OPEN = Key("-", EVERY_SCOPE)  # no key set: every route is open


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def line_for(name: str, token: str, scopes: str) -> str:
    """The API_KEYS_FILE line of a new key."""
    return f"{name} sha256:{hash_of(token)} {scopes}"


def parse(text: str) -> dict[str, Key]:
    """The keys of a file, by hash; raises ConfigError naming the line of the first mistake."""
    keys: dict[str, Key] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            digest, key = _key(words, names)
        except ValueError as exc:
            raise ConfigError(f"API_KEYS_FILE line {number}: {exc}") from None
        if digest in keys:
            raise ConfigError(f"API_KEYS_FILE line {number}: the same key as '{keys[digest].name}'")
        keys[digest] = key
        names.add(key.name)
    return keys


def _key(words: list[str], names: set[str]) -> tuple[str, Key]:
    if len(words) < 3:
        raise ValueError("a line is '<name> sha256:<64 hex digits> <scopes> [limits]'")
    name, stored, scopes, *limits = words
    if not _NAME.fullmatch(name):
        raise ValueError(f"'{name[:64]}' is not a name (letters, digits, '_', '.', '-'; up to 64)")
    if name in names:
        raise ValueError(f"duplicate name '{name}'")
    if name == SINGLE.name:  # the API_KEY variable's key: one owner of jobs and limits for both
        raise ValueError(f"'{name}' is the name of the API_KEY variable's key; choose another")
    match = _HASH.fullmatch(stored)
    if match is None:
        hint = " and this looks like a plaintext key" if stored.startswith(TOKEN_PREFIX) else ""
        raise ValueError(f"the key of '{name}' must be stored as sha256:<64 hex digits> (make keygen){hint}")
    wanted = [scope for scope in scopes.split(",") if scope]
    unknown = [scope for scope in wanted if scope not in SCOPES]
    if unknown or not wanted:
        raise ValueError(f"unknown scope '{(unknown or [scopes])[0]}' (scopes: {', '.join(SCOPES)})")
    values: dict[str, int] = {}
    for limit in limits:
        field, _, raw = limit.partition("=")
        if field not in _LIMITS or field in values:
            raise ValueError(f"bad limit '{limit}' (limits: jobs=<n>, download_gb_per_day=<x>)")
        values[field] = _limit(limit, field, raw)
    return match.group(1), Key(
        name,
        frozenset(wanted),
        values.get("jobs"),
        values.get("download_gb_per_day"),
    )


def _limit(limit: str, field: str, raw: str) -> int:
    try:
        value = int(raw) if field == "jobs" else int(float(raw) * 1e9)
    except (ValueError, OverflowError):  # OverflowError: inf, 1e400
        value = 0
    if value <= 0:
        raise ValueError(f"bad limit '{limit}' (a number above 0)")
    return value


class Keys:
    """The keys in force. Without API_KEY and API_KEYS_FILE every request is `OPEN`."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.api_keys_file
        self._single = settings.api_key
        self._keys: dict[str, Key] = {}
        self._seen: tuple[int, int, int] | None = None
        if self.path:
            self._seen, self._keys = self._read()

    @property
    def open(self) -> bool:
        return not self._single and not self.path

    def identify(self, header: str | None) -> Key | None:
        """The key an `Authorization: Bearer <token>` header names; None when it names none."""
        if self.open:
            return OPEN
        if self.path:
            self._reload()
        scheme, _, token = (header or "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        if self._single and hmac.compare_digest(token.encode(), self._single.encode()):
            return SINGLE
        return self._keys.get(hash_of(token))

    def named(self, name: str) -> Key | None:
        """The key in force called `name` (a job run later, or on another pod of the fleet,
        knows its key by name only); None when no such key is in force now."""
        if self.open:
            return OPEN if name == OPEN.name else None
        if self._single and name == SINGLE.name:
            return SINGLE
        if self.path:
            self._reload()
        return next((key for key in self._keys.values() if key.name == name), None)

    def names(self) -> list[str]:
        return sorted(key.name for key in self._keys.values())

    def _read(self) -> tuple[tuple[int, int, int], dict[str, Key]]:
        assert self.path is not None
        return read(self.path)

    def _reload(self) -> None:
        try:
            seen = _signature(os.stat(self.path))  # type: ignore[arg-type]
        except OSError:
            seen = None
        if seen == self._seen:
            return
        self._seen = seen
        try:
            seen, keys = self._read()
        except ConfigError as exc:
            log.error("%s; the keys in force stay", exc, extra={"event": "access.keys_kept"})
            return
        self._seen, self._keys = seen, keys
        log.info(
            "API_KEYS_FILE changed: %d key(s) now (%s)",
            len(keys),
            ", ".join(self.names()),
            extra={"event": "access.keys_changed"},
        )


def read(path: str) -> tuple[tuple[int, int, int], dict[str, Key]]:
    """The keys of the file at `path`, and what its `stat` was when read (a change shows in it)."""
    try:
        with open(path, encoding="utf-8") as file:
            seen = _signature(os.fstat(file.fileno()))
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"API_KEYS_FILE cannot be read: {type(exc).__name__}") from None
    return seen, parse(text)


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_mtime_ns, stat.st_size

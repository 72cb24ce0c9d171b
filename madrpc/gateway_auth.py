"""API keys for the HTTP gateway: the keys file, and checking what a caller presents.

A keys file holds one key per line; blank lines and lines starting with ``#`` are
ignored. A caller presents a key in ``X-API-Key: KEY`` (as the earlier MaDRPC did) or
``Authorization: Bearer KEY``. Keys are compared as SHA-256 digests with
:func:`hmac.compare_digest`, against every key in the file, so the time a check takes
tells nothing about how close a guess came. The file is read again when it changes
(looked at no more often than every :data:`RELOAD_CHECK_S`), so keys can be added and
revoked without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Mapping

from .errors import ConfigError

__all__ = ["MIN_KEY_LENGTH", "RELOAD_CHECK_S", "ApiKeys", "parse_keys", "presented_key"]

log = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16
"""Shortest key accepted in a keys file (characters): anything shorter can be guessed."""
RELOAD_CHECK_S = 1.0
"""How often, at most, the gateway looks whether the keys file changed."""


def parse_keys(text: str, source: str = "keys file") -> list[bytes]:
    """The keys in a keys file's ``text``; raises :class:`ConfigError` on a short key."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ConfigError(
                f"{source}:{number}: an API key must be at least {MIN_KEY_LENGTH} characters "
                "without spaces (make one with `openssl rand -hex 32`)")
        keys.append(key.encode())
    return keys


def presented_key(headers: Mapping[str, str]) -> bytes | None:
    """The key a request presents in ``X-API-Key`` or ``Authorization: Bearer``."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip().encode()
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip().encode()
    return None


class ApiKeys:
    """The keys of a keys file, reloaded when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._digests: list[bytes] = []
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._load()
        if not self._digests:
            raise ConfigError(f"{path}: no API keys in the file")

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, key: bytes | None) -> bool:
        """Whether ``key`` is one of the file's keys (in time independent of the key)."""
        self._maybe_reload()
        digest = hashlib.sha256(key or b"").digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found and key is not None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            self._load()
        except (OSError, ConfigError) as exc:   # keep the keys we have
            log.error("API keys not reloaded: %s", exc)

    def _load(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {self.path}: {exc}") from exc
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8") as file:
            keys = parse_keys(file.read(), self.path)
        if self._stamp is not None:
            log.info("API keys reloaded from %s: %d keys", self.path, len(keys))
        self._digests = [hashlib.sha256(key).digest() for key in keys]
        self._stamp = stamp

"""Opaque credentials (refresh tokens, API keys, client secrets): minted with 256 bits of
randomness and stored only as a SHA-256 hash. A slow password hash buys nothing for secrets
this strong, and a plain hash lets the row be found by an indexed lookup."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

REFRESH_TOKEN_PREFIX = "ffr_"
API_KEY_PREFIX = "ffk_"
CLIENT_SECRET_PREFIX = "ffs_"
CLIENT_ID_PREFIX = "ffc_"
# `ffk_` and 8 characters of the key: enough to recognise a key in a list, useless to guess it.
API_KEY_DISPLAY_LENGTH = 12
MAX_SECRET_LENGTH = 200


def new_secret(prefix: str) -> str:
    """A fresh secret: the prefix and 43 URL-safe characters (32 random bytes)."""
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """The hex SHA-256 under which a secret is stored and looked up."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hashes_match(stored: str, presented: str) -> bool:
    """Constant-time comparison of two stored-form hashes."""
    return hmac.compare_digest(stored.encode(), presented.encode())


_URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def well_formed(secret: str, prefix: str) -> bool:
    """Cheap shape check before any lookup: the right prefix, URL-safe characters (what
    new_secret makes) and a sane length."""
    return (
        secret.startswith(prefix)
        and len(prefix) + 20 <= len(secret) <= MAX_SECRET_LENGTH
        and _URL_SAFE.fullmatch(secret[len(prefix) :]) is not None
    )


def well_formed_id(value: str, max_length: int = 64) -> bool:
    """An identifier (client id, resource id, cursor) that can be looked up at all."""
    return 0 < len(value) <= max_length and _URL_SAFE.fullmatch(value) is not None

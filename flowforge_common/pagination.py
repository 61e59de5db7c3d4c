"""Cursor pagination helpers shared by every List RPC (`limit`, `page_token`)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from flowforge_common.errors import BadRequestError, FieldViolation

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def clamp_limit(limit: int) -> int:
    """0 means the default; above the maximum is refused rather than silently cut."""
    if limit == 0:
        return DEFAULT_LIMIT
    if limit < 0 or limit > MAX_LIMIT:
        raise BadRequestError(
            f"limit must be between 1 and {MAX_LIMIT}",
            [FieldViolation("limit", f"must be between 1 and {MAX_LIMIT}")],
        )
    return limit


def encode_page_token(position: dict[str, Any]) -> str:
    """Opaque token for the position after the last row of a page."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> dict[str, Any] | None:
    """Inverse of encode_page_token; a token that was not made here is a 400."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(
            "page_token is not valid", [FieldViolation("page_token", "not a token from this API")]
        ) from exc
    if not isinstance(value, dict):
        raise BadRequestError("page_token is not valid", [FieldViolation("page_token", "not a token from this API")])
    return value

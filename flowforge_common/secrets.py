"""Secrets at rest: AES-256-GCM sealing with key ids, so keys can rotate."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flowforge_common.settings import ServiceSettings

logger = logging.getLogger(__name__)

FORMAT_VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
DEV_KEY_FILE = "secrets.key"


class SecretBoxError(Exception):
    """A sealed value cannot be opened: unknown key id, tampering, or the wrong context."""


def key_id(key: bytes) -> str:
    """A short, non-secret fingerprint of a key; sealed values name their key with it."""
    return hashlib.sha256(b"flowforge-secret-key-id\x00" + key).hexdigest()[:8]


class SecretBox:
    """Seals and opens secrets with AES-256-GCM.

    A sealed value is `v1:<key id>:<base64url(nonce + ciphertext)>`. The first key seals; every
    key opens, so a key is rotated by putting the new key first and keeping the old one until
    every value sealed with it has been rewritten. `context` (e.g. the owning row's tenant and
    id) is authenticated but not stored: a sealed value copied to another row does not open.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        if any(len(key) != KEY_BYTES for key in keys):
            raise ValueError(f"secret keys must be {KEY_BYTES} bytes")
        self._sealing_key_id = key_id(keys[0])
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}

    def seal(self, plaintext: bytes, *, context: str) -> str:
        """Encrypts `plaintext` with the first key, bound to `context`."""
        header = f"{FORMAT_VERSION}:{self._sealing_key_id}"
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[self._sealing_key_id].encrypt(nonce, plaintext, _aad(header, context))
        return f"{header}:{base64.urlsafe_b64encode(nonce + ciphertext).decode()}"

    def open(self, sealed: str, *, context: str) -> bytes:
        """Decrypts a value sealed by any known key with the same `context`."""
        version, _, rest = sealed.partition(":")
        kid, _, payload = rest.partition(":")
        if version != FORMAT_VERSION or not payload:
            raise SecretBoxError("not a sealed secret of a known format")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise SecretBoxError(f"sealed with unknown key {kid!r}; is FLOWFORGE_SECRETS_KEY complete?")
        try:
            raw = base64.urlsafe_b64decode(payload.encode())
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(f"{version}:{kid}", context))
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SecretBoxError("sealed secret is corrupt or belongs elsewhere") from exc


def load_secret_box(settings: ServiceSettings) -> SecretBox:
    """The box for `settings.secrets_key`: comma-separated base64 32-byte keys, the sealing key
    first. Without it, a development key generated once under `settings.data_dir` (0600) and
    shared by the processes that use that directory."""
    if settings.secrets_key is not None:
        return SecretBox(parse_keys(settings.secrets_key.get_secret_value()))
    path = settings.data_dir / DEV_KEY_FILE
    logger.warning("FLOWFORGE_SECRETS_KEY is not set; using the development key in %s", path)
    return SecretBox([development_key(path)])


def parse_keys(value: str) -> list[bytes]:
    """Decodes a comma-separated list of base64 keys; the message never echoes key material."""
    keys = []
    for position, text in enumerate(part.strip() for part in value.split(",")):
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"secrets key #{position + 1} is not valid base64") from exc
        if len(key) != KEY_BYTES:
            raise ValueError(f"secrets key #{position + 1} must decode to {KEY_BYTES} bytes")
        keys.append(key)
    return keys


def development_key(path: Path) -> bytes:
    """A random 32-byte key kept at `path` (created once, 0600, race-free), for embedded mode."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = base64.urlsafe_b64encode(os.urandom(KEY_BYTES))
        # Written to a private temp file, then linked into place: linking fails if another
        # process won the race, and nobody ever reads a half-written key.
        descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".secrets-")  # mode 0600
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(encoded)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temp_name, path)
        finally:
            os.unlink(temp_name)
    if path.stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; it should be mode 0600", path)
    return parse_keys(path.read_text())[0]


def _aad(header: str, context: str) -> bytes:
    return f"{header}\x00{context}".encode()

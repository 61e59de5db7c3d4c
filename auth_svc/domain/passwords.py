"""Password hashing with argon2id, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import secrets

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

logger = logging.getLogger(__name__)


def owasp_hasher() -> argon2.PasswordHasher:
    """argon2id with OWASP's minimum recommendation: 19 MiB of memory, 2 passes, 1 lane."""
    return argon2.PasswordHasher(
        time_cost=2,
        memory_cost=19456,
        parallelism=1,
        hash_len=32,
        salt_len=16,
        type=argon2.Type.ID,
    )


class Passwords:
    """Hashes and verifies passwords. Each hash costs tens of milliseconds of CPU, so the work
    runs in a worker thread (argon2-cffi releases the GIL) instead of stalling every other RPC."""

    def __init__(self, hasher: argon2.PasswordHasher | None = None) -> None:
        self._hasher = hasher or owasp_hasher()
        # Verified against when an email is unknown, so that a miss costs as much as a wrong
        # password and response times do not reveal which emails have accounts. Made with the
        # current parameters, hence at start-up rather than as a constant.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        """A new salted hash of `password`."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches `password_hash`."""
        try:
            return await asyncio.to_thread(self._hasher.verify, password_hash, password)
        except VerificationError:
            return False
        except InvalidHashError:
            logger.error("a stored password hash is not a valid argon2 hash")
            return False

    async def burn_verification(self, password: str) -> None:
        """Spends the time of one verification without an account to verify against."""
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)

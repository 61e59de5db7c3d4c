"""argon2id hashing with OWASP parameters, off the event loop."""

from __future__ import annotations

import argon2

from auth_svc.domain.passwords import Passwords

PASSWORD = "correct-horse-battery"


async def test_hashes_are_argon2id_with_owasp_parameters() -> None:
    passwords = Passwords()
    password_hash = await passwords.hash(PASSWORD)
    assert password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await passwords.hash(PASSWORD) != password_hash, "every hash has its own salt"


async def test_verify_accepts_only_the_password() -> None:
    passwords = Passwords()
    password_hash = await passwords.hash(PASSWORD)
    assert await passwords.verify(password_hash, PASSWORD)
    assert not await passwords.verify(password_hash, PASSWORD.upper())
    assert not await passwords.verify("not a hash", PASSWORD)


async def test_hashes_made_with_other_parameters_need_a_rehash() -> None:
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    passwords = Passwords()
    assert passwords.needs_rehash(weak.hash(PASSWORD))
    assert not passwords.needs_rehash(await passwords.hash(PASSWORD))

"""The cache of verified access tokens: a token is verified once, then served from memory until
its `exp`, the cache's own bound or the loss of its key, whichever comes first; a token that
differs in any character (a tampered one) is verified afresh and refused."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

from flowforge_common.auth import JwksKeySource, Principal, TokenVerifier, VerifiedToken, VerifiedTokenCache
from flowforge_common.errors import UnauthenticatedError
from tests.fixtures.tokens import AUDIENCE, ISSUER, TokenFactory


class CountingKeys(JwksKeySource):
    """A key source that counts the key lookups of full verifications (cache hits make none)."""

    def __init__(self, jwks: list[dict[str, Any]]) -> None:
        self.published = jwks
        super().__init__(self._fetch, min_refresh_interval=0)
        self.load(jwks)
        self.lookups = 0

    async def _fetch(self) -> list[dict[str, Any]]:
        return self.published

    async def key_for(self, kid: str) -> Any | None:
        self.lookups += 1
        return await super().key_for(kid)


class Clock:
    """A hand-driven clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier_for(tokens: TokenFactory, cache: VerifiedTokenCache | None = None, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier(CountingKeys(tokens.jwks()), issuer=ISSUER, audience=AUDIENCE, token_cache=cache, **kwargs)


def lookups(verifier: TokenVerifier) -> int:
    keys = verifier.keys
    assert isinstance(keys, CountingKeys)
    return keys.lookups


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str, how: str, other: str) -> str:
    """A token that differs from a genuine one in its claims or its signature (`other` is
    another genuine token of the same key)."""
    header, claims, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    if how == "another tenant in the claims":
        return f"{header}.{b64url(json.dumps({**payload, 'tid': 'ten_evil'}).encode())}.{signature}"
    if how == "admin scope in the claims":
        return f"{header}.{b64url(json.dumps({**payload, 'scope': 'admin'}).encode())}.{signature}"
    if how == "one signature character changed":
        flipped = "A" if signature[10] != "A" else "B"
        return f"{header}.{claims}.{signature[:10]}{flipped}{signature[11:]}"
    if how == "the signature of another token":
        return f"{header}.{claims}.{other.rsplit('.', 1)[1]}"
    assert how == "no signature"
    return f"{header}.{claims}."


TAMPERINGS = (
    "another tenant in the claims",
    "admin scope in the claims",
    "one signature character changed",
    "the signature of another token",
    "no signature",
)


async def test_a_token_is_verified_once_then_served_from_the_cache(tokens: TokenFactory) -> None:
    verifier = verifier_for(tokens)
    token = tokens.mint(tenant_id="ten_a", subject="usr_a", scopes=("runs:read",))
    first = await verifier.verify(token)
    second = await verifier.verify(token)
    assert second == first
    assert (second.tenant_id, second.subject, second.scopes, second.token) == (
        "ten_a",
        "usr_a",
        frozenset({"runs:read"}),
        token,
    )
    assert lookups(verifier) == 1
    assert len(verifier.token_cache) == 1


@pytest.mark.parametrize("how", TAMPERINGS)
async def test_a_tampered_token_is_verified_and_refused_even_when_the_genuine_one_is_cached(
    tokens: TokenFactory, how: str
) -> None:
    verifier = verifier_for(tokens)
    genuine = tokens.mint(tenant_id="ten_a", scopes=("runs:read",))
    await verifier.verify(genuine)
    with pytest.raises(UnauthenticatedError):
        await verifier.verify(tampered(genuine, how, other=tokens.mint(tenant_id="ten_evil", scopes=("admin",))))
    assert lookups(verifier) == 2  # the tampered token went through full verification
    assert len(verifier.token_cache) == 1  # and left nothing behind
    assert (await verifier.verify(genuine)).tenant_id == "ten_a"


async def test_a_cached_token_still_expires_at_its_exp(tokens: TokenFactory) -> None:
    # No leeway, so that the refusal right after `exp` shows the cache did not outlive it.
    verifier = verifier_for(tokens, leeway_seconds=0)
    exp = int(time.time()) + 2
    token = tokens.mint(exp=exp)
    await verifier.verify(token)
    await verifier.verify(token)
    assert lookups(verifier) == 1
    await asyncio.sleep(exp - time.time() + 0.05)
    with pytest.raises(UnauthenticatedError, match="expired"):
        await verifier.verify(token)
    assert len(verifier.token_cache) == 0


def test_cache_entries_end_at_exp_by_the_wall_clock() -> None:
    wall, monotonic = Clock(1_000.0), Clock(0.0)
    cache = VerifiedTokenCache(max_ttl_seconds=60, wall_clock=wall, monotonic_clock=monotonic)
    verified = verified_token(expires_at=1_010.0)
    cache.put(b"k", verified)
    wall.now = 1_009.9
    assert cache.get(b"k", always_current) is verified.principal
    wall.now = 1_010.0
    assert cache.get(b"k", always_current) is None
    assert len(cache) == 0


def test_cache_entries_end_after_the_max_ttl_whatever_their_exp() -> None:
    wall, monotonic = Clock(1_000.0), Clock(0.0)
    cache = VerifiedTokenCache(max_ttl_seconds=60, wall_clock=wall, monotonic_clock=monotonic)
    cache.put(b"k", verified_token(expires_at=10_000.0))
    monotonic.now = 59.9
    assert cache.get(b"k", always_current) is not None
    monotonic.now = 60.0
    assert cache.get(b"k", always_current) is None


def test_tokens_past_their_exp_are_not_cached() -> None:
    cache = VerifiedTokenCache(wall_clock=Clock(1_000.0))
    # Accepted within the verifier's leeway, but the cache never extends a token's life.
    cache.put(b"k", verified_token(expires_at=999.0))
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = VerifiedTokenCache(max_entries=2, wall_clock=Clock(0.0), monotonic_clock=Clock(0.0))
    for key in (b"a", b"b"):
        cache.put(key, verified_token(expires_at=100.0))
    assert cache.get(b"a", always_current) is not None  # `b` is now the least recently used
    cache.put(b"c", verified_token(expires_at=100.0))
    assert len(cache) == 2
    assert cache.get(b"b", always_current) is None
    assert cache.get(b"a", always_current) is not None
    assert cache.get(b"c", always_current) is not None


def test_a_zero_sized_cache_remembers_nothing() -> None:
    cache = VerifiedTokenCache(max_entries=0, wall_clock=Clock(0.0))
    cache.put(b"k", verified_token(expires_at=100.0))
    assert len(cache) == 0


async def test_a_disabled_cache_verifies_every_time(tokens: TokenFactory) -> None:
    verifier = verifier_for(tokens, VerifiedTokenCache(max_entries=0))
    token = tokens.mint()
    await verifier.verify(token)
    await verifier.verify(token)
    assert lookups(verifier) == 2


async def test_a_cached_token_is_refused_once_its_key_leaves_the_key_set(tokens: TokenFactory) -> None:
    verifier = verifier_for(tokens)
    token = tokens.mint()
    await verifier.verify(token)
    keys = verifier.keys
    assert isinstance(keys, CountingKeys)
    # The issuer rotates the key out (e.g. it leaked) and this process reloads the key set.
    keys.published = TokenFactory().jwks()
    keys.load(keys.published)
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        await verifier.verify(token)
    assert len(verifier.token_cache) == 0


async def test_a_reload_of_an_unchanged_key_set_keeps_cached_tokens(tokens: TokenFactory) -> None:
    """A token with a made-up `kid` makes the key source fetch the JWKS again; that must not
    throw away every verified token."""
    verifier = verifier_for(tokens)
    token = tokens.mint()
    await verifier.verify(token)
    with pytest.raises(UnauthenticatedError, match="unknown key"):
        await verifier.verify(tokens.mint(headers={"kid": "made-up"}))
    assert lookups(verifier) == 2
    await verifier.verify(token)
    assert lookups(verifier) == 2  # still cached
    assert len(verifier.token_cache) == 1


async def test_refused_tokens_are_never_cached(tokens: TokenFactory) -> None:
    verifier = verifier_for(tokens)
    expired = tokens.mint(iat=int(time.time()) - 100, exp=int(time.time()) - 60)
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            await verifier.verify(expired)
    assert lookups(verifier) == 2
    assert len(verifier.token_cache) == 0


def verified_token(*, expires_at: float) -> VerifiedToken:
    return VerifiedToken(Principal(tenant_id="ten_x", subject="usr_x"), "kid", object(), expires_at)


def always_current(_kid: str, _key: Any) -> bool:
    return True

"""Credential building blocks: the API key cache's 5 s bound, scope granting, secret masking
and the shape of opaque secrets."""

from __future__ import annotations

import pytest

from auth_svc.domain.audit import MASK, masked
from auth_svc.domain.models import Role
from auth_svc.domain.scopes import clamp_to_role, grantable_scopes
from auth_svc.domain.secrets import API_KEY_PREFIX, new_secret, secret_hash, well_formed
from flowforge_common.auth import API_KEY_CACHE_MAX_SECONDS, CachedApiKeyResolver, Principal
from flowforge_common.errors import PermissionDeniedError, UnauthenticatedError, ValidationError

KEY = "ffk_" + "k" * 43


class CountingResolver:
    def __init__(self, valid: set[str]) -> None:
        self.valid = valid
        self.calls = 0

    async def __call__(self, key: str) -> Principal:
        self.calls += 1
        if key not in self.valid:
            raise UnauthenticatedError("no")
        return Principal(tenant_id="ten_a", subject="apikey:key_a", scopes=frozenset({"runs:read"}))


async def test_the_cache_never_remembers_longer_than_5_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("flowforge_common.auth.time.monotonic", lambda: now[0])
    backend = CountingResolver({KEY})
    cache = CachedApiKeyResolver(backend, ttl_seconds=3600)
    assert cache.ttl_seconds == API_KEY_CACHE_MAX_SECONDS == 5.0
    assert (await cache(KEY)).subject == "apikey:key_a"
    await cache(KEY)
    assert backend.calls == 1
    backend.valid.clear()  # revoked
    now[0] += 4.9
    assert (await cache(KEY)).tenant_id == "ten_a"
    now[0] += 0.2
    with pytest.raises(UnauthenticatedError):
        await cache(KEY)
    assert backend.calls == 2


async def test_refusals_are_cached_and_malformed_keys_never_leave_the_process() -> None:
    backend = CountingResolver(set())
    cache = CachedApiKeyResolver(backend)
    for _ in range(3):
        with pytest.raises(UnauthenticatedError):
            await cache(KEY)
    assert backend.calls == 1
    for bogus in ("", "Bearer x", "ffk", "x" * 500):
        with pytest.raises(UnauthenticatedError):
            await cache(bogus)
    assert backend.calls == 1


def test_granted_scopes_never_exceed_the_caller() -> None:
    editor = Principal("ten_a", "usr_a", frozenset({"workflows:read", "workflows:write", "runs:read"}))
    assert grantable_scopes(editor, []) == ("workflows:read", "workflows:write", "runs:read")
    assert grantable_scopes(editor, ["runs:read", "workflows:read"]) == ("workflows:read", "runs:read")
    with pytest.raises(PermissionDeniedError):
        grantable_scopes(editor, ["admin"])
    with pytest.raises(PermissionDeniedError):
        grantable_scopes(editor, ["agents:write"])
    with pytest.raises(ValidationError):
        grantable_scopes(editor, ["root"])
    admin = Principal("ten_a", "usr_b", frozenset({"admin"}))
    assert grantable_scopes(admin, ["agents:write"]) == ("agents:write",)
    assert clamp_to_role(("agents:write", "agents:read"), Role.VIEWER) == ("agents:read",)


def test_secrets_are_masked_at_any_depth() -> None:
    change = {"name": "k", "key": "ffk_x", "nested": [{"client_secret": "s", "ok": 1}], "password": ""}
    assert masked(change) == {"name": "k", "key": MASK, "nested": [{"client_secret": MASK, "ok": 1}], "password": ""}


def test_opaque_secrets_are_long_random_and_hashed() -> None:
    first, second = new_secret(API_KEY_PREFIX), new_secret(API_KEY_PREFIX)
    assert first != second
    assert first.startswith("ffk_") and len(first) == 47
    assert well_formed(first, API_KEY_PREFIX)
    assert not well_formed("ffk_short", API_KEY_PREFIX)
    assert len(secret_hash(first)) == 64 and secret_hash(first) != secret_hash(second)

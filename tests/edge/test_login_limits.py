"""Building blocks of the per-email sign-in limit: HMAC bucket names, windows longer than a
minute, and giving an attempt back (in memory and in Redis's Lua script)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from edge.app import create_app
from edge.authn import ROUTE_ACCESS_KEY, Access, RateClass
from edge.ratelimit import EmailBuckets, MemoryLimiter, RateLimiter
from tests.edge.support import edge_settings
from tests.fixtures.databases import REDIS_URL

WINDOW_MS = 900_000


def test_buckets_are_keyed_hmacs_of_the_normalised_address() -> None:
    buckets = EmailBuckets(b"s" * 32)
    bucket = buckets.bucket("ada@example.com")
    assert bucket.startswith("login:email:")
    assert "ada" not in bucket and "@" not in bucket
    assert buckets.bucket("  Ada@Example.COM ") == bucket
    assert buckets.bucket("bob@example.com") != bucket
    assert EmailBuckets(b"t" * 32).bucket("ada@example.com") != bucket


def test_only_login_is_limited_per_email() -> None:
    routes = create_app(edge_settings("127.0.0.1:1"))[ROUTE_ACCESS_KEY]
    limited = {(route.method, route.resource.canonical) for route, rule in routes.items() if rule.password_sign_in}
    assert limited == {("POST", "/api/v1/auth/login")}
    rule = next(rule for rule in routes.values() if rule.password_sign_in)
    assert (rule.access, rule.rate_class) == (Access.PUBLIC, RateClass.AUTH)


def test_memory_gcra_over_a_long_window_and_refunds(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("edge.ratelimit.time.monotonic", lambda: now[0])
    limiter = MemoryLimiter()
    assert [limiter.check("k", 3, WINDOW_MS).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.check("k", 3, WINDOW_MS)
    assert refused.retry_after_ms == 300_000  # one emission interval: 900 s / 3
    limiter.refund("k", 3, WINDOW_MS)
    assert limiter.check("k", 3, WINDOW_MS).allowed
    assert not limiter.check("k", 3, WINDOW_MS).allowed
    limiter.refund("never-spent", 3, WINDOW_MS)  # nothing to give back: no bucket appears
    assert limiter.check("never-spent", 3, WINDOW_MS).remaining == 2


async def test_redis_refunds_give_back_exactly_one_attempt(redis_prefix: str) -> None:
    redis = aioredis.from_url(REDIS_URL)
    try:
        limiter = RateLimiter(redis, prefix=redis_prefix, timeout=2.0)
        decisions = [await limiter.check("k", 3, WINDOW_MS) for _ in range(4)]
        assert [decision.allowed for decision in decisions] == [True, True, True, False]
        assert 0 < decisions[-1].retry_after_ms <= 300_000
        await limiter.refund("k", 3, WINDOW_MS)
        assert (await limiter.check("k", 3, WINDOW_MS)).allowed
        assert not (await limiter.check("k", 3, WINDOW_MS)).allowed
        # Refunding everything removes the key rather than leaving a TAT in the past.
        for _ in range(3):
            await limiter.refund("k", 3, WINDOW_MS)
        assert await redis.exists(redis_prefix + "k") == 0
        await limiter.refund("absent", 3, WINDOW_MS)
        assert await redis.exists(redis_prefix + "absent") == 0
        assert limiter.backend == "redis"
    finally:
        await redis.aclose()

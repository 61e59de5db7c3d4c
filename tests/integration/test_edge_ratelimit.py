"""Edge rate limiting against a real Redis (a unique key prefix per test): GCRA per principal
and route class, per client IP for sign-in, `RateLimit-*` headers, 429 + `Retry-After`, and the
in-memory fallback when Redis is unset or unreachable."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.ratelimit import MemoryLimiter, RateLimiter
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.databases import REDIS_URL
from tests.fixtures.tokens import TokenFactory

Client = TestClient[Any, Any]


async def edge(aiohttp_client: AiohttpClient, backend: EchoBackend, **overrides: Any) -> Client:
    return await aiohttp_client(create_app(edge_settings(backend.target, **overrides)))


def bearer(tokens: TokenFactory, tenant: str = "ten_a", subject: str = "usr_a") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint(tenant_id=tenant, subject=subject)}"}


async def test_reads_are_limited_per_principal_in_redis(
    aiohttp_client: AiohttpClient, backend: EchoBackend, tokens: TokenFactory, redis_prefix: str
) -> None:
    client = await edge(
        aiohttp_client, backend, redis_url=REDIS_URL, rate_limit_prefix=redis_prefix, rate_limit_read_per_minute=3
    )
    alice = bearer(tokens)
    remaining = []
    for _ in range(3):
        response = await client.get("/api/v1/agents", headers=alice)
        assert response.status == 200
        assert response.headers["RateLimit-Limit"] == "3"
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]

    refused = await client.get("/api/v1/agents", headers=alice)
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert (await refused.json())["type"] == "https://flowforge.dev/problems/rate-limited"

    # Another principal, and another class of the same principal, have buckets of their own.
    assert (await client.get("/api/v1/agents", headers=bearer(tokens, subject="usr_b"))).status == 200
    assert (await client.delete("/api/v1/agents/agt_1", headers=alice)).status == 204

    redis = aioredis.from_url(REDIS_URL)
    try:
        keys = {key.decode() async for key in redis.scan_iter(match=redis_prefix + "*")}
    finally:
        await redis.aclose()
    assert f"{redis_prefix}read:ten_a:usr_a" in keys


async def test_sign_in_is_limited_per_client_ip(
    aiohttp_client: AiohttpClient, backend: EchoBackend, redis_prefix: str
) -> None:
    client = await edge(
        aiohttp_client, backend, redis_url=REDIS_URL, rate_limit_prefix=redis_prefix, rate_limit_auth_per_minute=2
    )
    body = {"email": "a@example.com", "password": "correct-horse-battery", "tenant_name": "t"}
    statuses = [(await client.post("/api/v1/auth/signup", json=body)).status for _ in range(3)]
    assert statuses == [201, 201, 429]
    # System routes are never limited.
    assert all([(await client.get("/health")).status == 200 for _ in range(5)])


async def test_limits_are_configurable_per_tenant_and_subject(
    aiohttp_client: AiohttpClient, backend: EchoBackend, tokens: TokenFactory, redis_prefix: str
) -> None:
    client = await edge(
        aiohttp_client,
        backend,
        redis_url=REDIS_URL,
        rate_limit_prefix=redis_prefix,
        rate_limit_read_per_minute=1,
        rate_limit_overrides={"ten_big": {"read": 50}, "usr_tiny": {"read": 1}},
    )
    big = await client.get("/api/v1/agents", headers=bearer(tokens, tenant="ten_big"))
    assert big.headers["RateLimit-Limit"] == "50"
    tiny = await client.get("/api/v1/agents", headers=bearer(tokens, tenant="ten_big", subject="usr_tiny"))
    assert tiny.headers["RateLimit-Limit"] == "1"


async def test_the_lua_script_is_atomic_under_concurrency(redis_prefix: str) -> None:
    redis = aioredis.from_url(REDIS_URL)
    try:
        limiter = RateLimiter(redis, prefix=redis_prefix, timeout=2.0)
        decisions = await asyncio.gather(*(limiter.check("burst", 10) for _ in range(25)))
    finally:
        await redis.aclose()
    assert sum(decision.allowed for decision in decisions) == 10
    assert limiter.backend == "redis"


async def test_unreachable_redis_falls_back_to_memory_and_says_so(
    aiohttp_client: AiohttpClient, backend: EchoBackend, tokens: TokenFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await edge(aiohttp_client, backend, redis_url="redis://127.0.0.1:1/0", rate_limit_read_per_minute=2)
    alice = bearer(tokens)
    with caplog.at_level(logging.WARNING):
        statuses = [(await client.get("/api/v1/agents", headers=alice)).status for _ in range(3)]
    assert statuses == [200, 200, 429], "the local limiter still limits"
    assert any("Redis is unreachable" in record.getMessage() for record in caplog.records)
    ready = await (await client.get("/health/ready")).json()
    assert ready["rate_limiter"] == "memory (redis unreachable)"


async def test_without_redis_url_the_limiter_is_in_memory(
    aiohttp_client: AiohttpClient, backend: EchoBackend, tokens: TokenFactory
) -> None:
    client = await edge(aiohttp_client, backend, rate_limit_write_per_minute=1)
    alice = bearer(tokens)
    assert (await client.delete("/api/v1/agents/agt_1", headers=alice)).status == 204
    assert (await client.delete("/api/v1/agents/agt_1", headers=alice)).status == 429
    assert (await (await client.get("/health/ready")).json())["rate_limiter"] == "memory"


def test_gcra_allows_a_burst_then_one_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("edge.ratelimit.time.monotonic", lambda: now[0])
    limiter = MemoryLimiter()
    assert [limiter.check("k", 6).allowed for _ in range(7)] == [True] * 6 + [False]
    refused = limiter.check("k", 6)
    assert refused.retry_after_ms == 10_000  # one emission interval: 60 s / 6
    now[0] += 10.0
    assert limiter.check("k", 6).allowed
    assert not limiter.check("k", 6).allowed


async def test_behind_a_trusted_proxy_the_forwarded_client_ip_is_limited(
    aiohttp_client: AiohttpClient, backend: EchoBackend
) -> None:
    client = await edge(aiohttp_client, backend, rate_limit_auth_per_minute=1, trusted_proxy_hops=1)
    body = {"email": "a@example.com", "password": "correct-horse-battery", "tenant_name": "t"}

    async def signup(forwarded: str) -> int:
        response = await client.post("/api/v1/auth/signup", json=body, headers={"X-Forwarded-For": forwarded})
        return response.status

    assert await signup("203.0.113.7") == 201
    assert await signup("203.0.113.8") == 201
    # A client cannot dodge its bucket by prepending made-up addresses.
    assert await signup("198.51.100.1, 203.0.113.7") == 429


async def test_a_tenant_shares_one_execute_budget_and_a_refused_call_costs_its_principal_nothing(
    aiohttp_client: AiohttpClient, backend: EchoBackend, tokens: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("edge.ratelimit.time.monotonic", lambda: now[0])
    client = await edge(
        aiohttp_client, backend, rate_limit_execute_per_minute=2, rate_limit_tenant_execute_per_minute=3
    )
    alice, bob = bearer(tokens), bearer(tokens, subject="usr_b")
    start = "/api/v1/workflows/wf_1/execute"
    answers = [await client.post(start, json={}, headers=headers) for headers in (alice, alice, bob, bob)]
    assert [answer.status == 429 for answer in answers] == [False, False, False, True]
    assert "tenant rate limit of 3 execute calls" in (await answers[3].json())["detail"]
    assert answers[3].headers["RateLimit-Limit"] == "3"
    # Another tenant's budget is its own.
    assert (await client.post(start, json={}, headers=bearer(tokens, tenant="ten_b"))).status != 429
    # One tenant interval later (60 s / 3) the tenant has room for one more start; bob's own
    # bucket (one start per 30 s) still has it, as the refused call was given back.
    now[0] += 20.0
    assert (await client.post(start, json={}, headers=bob)).status != 429

"""OWASP API2/API4: password guessing is throttled per email address as well as per client IP,
in Redis (shared by every edge replica), for every address whether or not it has an account,
with keys that never hold an address; a sign-in that proves the password costs nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.settings import EdgeSettings
from tests.fixtures.databases import REDIS_URL
from tests.fixtures.stack import PASSWORD, Stack

Client = TestClient[Any, Any]
LIMIT = 3
SECRET = "k" * 32


async def throttled_edge(aiohttp_client: AiohttpClient, stack: Stack, redis_prefix: str, **overrides: Any) -> Client:
    """A second edge in front of the stack's services: Redis-backed limits, one trusted proxy
    (so each request may come from another client IP) and a per-IP limit out of the way."""
    settings: dict[str, Any] = {
        "auth_target": f"127.0.0.1:{stack.services['auth'].port}",
        "workflow_target": f"127.0.0.1:{stack.services['workflow'].port}",
        "execution_target": f"127.0.0.1:{stack.services['execution'].port}",
        "redis_url": REDIS_URL,
        "rate_limit_prefix": redis_prefix,
        "rate_limit_key_secret": SECRET,
        "rate_limit_auth_per_minute": 1000,
        "rate_limit_login_failures_per_account": LIMIT,
        "rate_limit_login_failures_window_seconds": 900,
        "trusted_proxy_hops": 1,
        **overrides,
    }
    return await aiohttp_client(create_app(EdgeSettings(**settings)))


def login_from(client: Client) -> Callable[..., Coroutine[Any, Any, ClientResponse]]:
    addresses = iter(range(1, 250))

    async def login(email: str, password: str = PASSWORD, **extra: str) -> ClientResponse:
        # Every attempt from another client address: a per-IP limit alone would never trigger.
        forwarded = {"X-Forwarded-For": f"203.0.113.{next(addresses)}"}
        return await client.post(
            "/api/v1/auth/login", json={"email": email, "password": password, **extra}, headers=forwarded
        )

    return login


async def redis_keys(prefix: str) -> set[str]:
    redis = aioredis.from_url(REDIS_URL)
    try:
        return {key.decode() async for key in redis.scan_iter(match=prefix + "*")}
    finally:
        await redis.aclose()


async def test_guessing_one_accounts_password_from_many_addresses_is_throttled(
    stack: Stack, aiohttp_client: AiohttpClient, redis_prefix: str
) -> None:
    victim, bystander = await stack.member(), await stack.member()
    client = await throttled_edge(aiohttp_client, stack, redis_prefix)
    login = login_from(client)

    statuses = [(await login(victim.email, f"guess-number-{i}")).status for i in range(LIMIT)]
    assert statuses == [401] * LIMIT
    refused = await login(victim.email.upper(), "guess-number-x")  # the address, however spelled
    assert refused.status == 429
    assert refused.content_type == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    assert refused.headers["RateLimit-Remaining"] == "0"
    problem = await refused.json()
    assert problem["type"] == "https://flowforge.dev/problems/rate-limited"
    assert victim.email not in await refused.text()
    # The address is locked for everyone for a while, its owner too: guessing gets no further.
    assert (await login(victim.email)).status == 429

    # Other addresses are untouched, from the same client addresses.
    assert (await login(bystander.email, "guess-number-0")).status == 401
    assert (await login(bystander.email)).status == 200

    keys = await redis_keys(redis_prefix)
    login_keys = {key for key in keys if key.startswith(redis_prefix + "login:email:")}
    assert len(login_keys) == 2
    assert not any("@" in key or "example" in key for key in keys), keys


async def test_unknown_addresses_are_throttled_exactly_like_registered_ones(
    stack: Stack, aiohttp_client: AiohttpClient, redis_prefix: str
) -> None:
    member = await stack.member()
    client = await throttled_edge(aiohttp_client, stack, redis_prefix)
    login = login_from(client)
    answers: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for email in (member.email, f"nobody-{uuid.uuid4().hex[:8]}@example.com"):
        answers[email] = []
        for i in range(LIMIT + 1):
            response = await login(email, f"guess-number-{i}")
            body = {k: v for k, v in (await response.json()).items() if k != "request_id"}
            answers[email].append((response.status, body))
    registered, unknown = answers.values()
    assert [status for status, _ in registered] == [401] * LIMIT + [429]
    assert registered == unknown


async def test_sign_ins_that_prove_the_password_cost_nothing(
    stack: Stack, aiohttp_client: AiohttpClient, redis_prefix: str
) -> None:
    member = await stack.member()
    shared = f"shared-{uuid.uuid4().hex[:8]}@example.com"
    for name in ("first", "second"):
        body = {"email": shared, "password": PASSWORD, "tenant_name": name}
        assert (await stack.client.post("/api/v1/auth/signup", json=body)).status == 201
    client = await throttled_edge(aiohttp_client, stack, redis_prefix)
    login = login_from(client)
    assert [(await login(member.email)).status for _ in range(LIMIT * 2)] == [200] * (LIMIT * 2)
    # A 409 tenant_required proves the password too.
    assert [(await login(shared)).status for _ in range(LIMIT * 2)] == [409] * (LIMIT * 2)
    # Failures still count after all those successes.
    assert [(await login(member.email, "nope-nope-nope")).status for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:1/0"])
async def test_without_redis_the_limit_holds_in_memory(
    stack: Stack, aiohttp_client: AiohttpClient, redis_prefix: str, redis_url: str | None
) -> None:
    member = await stack.member()
    client = await throttled_edge(aiohttp_client, stack, redis_prefix, redis_url=redis_url)
    login = login_from(client)
    statuses = [(await login(member.email, "wrong-password-1")).status for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]

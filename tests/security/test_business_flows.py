"""OWASP API6 (unrestricted access to sensitive business flows): the flows worth automating
against FlowForge are throttled. Mass sign-up (a tenant per call) is limited per client IP,
whatever X-Forwarded-For a client forges, while other clients sign up freely; starting and
controlling runs spends a per-principal `execute` budget of its own, tighter than writes, and a
tenant-wide one that all its principals share (API keys do not multiply it), which one tenant
exhausting leaves other tenants (and the tenant's reads and edits) untouched; and
anonymous run triggers (inbound hooks) are limited per client IP."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.settings import EdgeSettings
from tests.fixtures.stack import PASSWORD, Member, Stack

Client = TestClient[Any, Any]
WORKFLOW = {"name": "flow", "steps": [{"id": "a", "type": "delay", "config": {"duration_ms": 60_000}}]}


async def edge_with(aiohttp_client: AiohttpClient, stack: Stack, **overrides: Any) -> Client:
    """A second edge in front of the stack's services (in-memory limits of its own), behind one
    trusted proxy so that each request may come from another client IP."""
    settings: dict[str, Any] = {
        "auth_target": f"127.0.0.1:{stack.services['auth'].port}",
        "workflow_target": f"127.0.0.1:{stack.services['workflow'].port}",
        "execution_target": f"127.0.0.1:{stack.services['execution'].port}",
        "trusted_proxy_hops": 1,
        **overrides,
    }
    return await aiohttp_client(create_app(EdgeSettings(**settings)))


async def signup(client: Client, forwarded: str | None = None) -> tuple[ClientResponse, str]:
    email = f"bulk-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": PASSWORD, "tenant_name": f"bulk-{uuid.uuid4().hex[:6]}"}
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return await client.post("/api/v1/auth/signup", json=body, headers=headers), email


async def assert_rate_limited(response: ClientResponse, rate_class: str) -> None:
    assert response.status == 429, await response.text()
    assert response.content_type == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Remaining"] == "0"
    problem = await response.json()
    assert problem["type"] == "https://flowforge.dev/problems/rate-limited"
    assert f"{rate_class} calls per minute" in problem["detail"]


async def test_mass_signup_is_throttled_at_the_shipped_limit_whatever_the_client_forges(stack: Stack) -> None:
    """The stack's edge as shipped: no proxy is trusted, so X-Forwarded-For is the client's own
    invention and must not give it a fresh bucket."""
    statuses = []
    for attempt in range(30):
        response, _ = await signup(stack.client, forwarded=f"198.51.100.{attempt + 1}")
        statuses.append(response.status)
        if response.status == 201:
            assert response.headers["RateLimit-Limit"] == str(EdgeSettings().rate_limit_auth_per_minute) == "20"
        else:
            await assert_rate_limited(response, "auth")
            break
    assert statuses[0] == 201
    assert statuses[-1] == 429, statuses
    # The burst is the limit, plus at most the one request per 3 s that the minute refills.
    assert 20 <= statuses.count(201) <= 22, statuses


async def test_signup_is_limited_per_client_ip(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    client = await edge_with(aiohttp_client, stack, rate_limit_auth_per_minute=4)
    bulk, other = "203.0.113.10", "203.0.113.20"
    created = [await signup(client, bulk) for _ in range(4)]
    assert [response.status for response, _ in created] == [201] * 4
    refused, refused_email = await signup(client, bulk)
    await assert_rate_limited(refused, "auth")
    # Prepending made-up hops does not help: the trusted proxy's entry is the last one.
    forged, _ = await signup(client, f"{other}, {bulk}")
    await assert_rate_limited(forged, "auth")

    # Another client signs up as usual, and the refused sign-up created nothing.
    response, _ = await signup(client, other)
    assert response.status == 201, await response.text()
    for email, status in ((created[0][1], 200), (refused_email, 401)):
        login = await client.post(
            "/api/v1/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.30"},
        )
        assert login.status == status, (email, await login.text())


async def create_workflow(client: Client, member: Member) -> str:
    response = await client.post("/api/v1/workflows", json=WORKFLOW, headers=member.headers)
    assert response.status == 201, await response.text()
    workflow_id: str = (await response.json())["id"]
    return workflow_id


async def test_run_starts_spend_a_per_principal_execute_budget(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    client = await edge_with(aiohttp_client, stack, rate_limit_execute_per_minute=3)
    owner, neighbour = await stack.member(), await stack.member()
    workflow_id = await create_workflow(client, owner)
    execute = f"/api/v1/workflows/{workflow_id}/execute"

    remaining = []
    run_ids = []
    for _ in range(3):
        response = await client.post(execute, json={"input": {}}, headers=owner.headers)
        assert response.status == 202, await response.text()
        assert response.headers["RateLimit-Limit"] == "3"
        remaining.append(response.headers["RateLimit-Remaining"])
        run_ids.append((await response.json())["id"])
    assert remaining == ["2", "1", "0"]
    await assert_rate_limited(await client.post(execute, json={"input": {}}, headers=owner.headers), "execute")
    # Run controls spend the same budget: a scripted start-cancel loop gains nothing.
    cancel = await client.post(f"/api/v1/runs/{run_ids[0]}/cancel", json={}, headers=owner.headers)
    await assert_rate_limited(cancel, "execute")

    # The refused calls did nothing; reads and edits have budgets of their own.
    runs = await client.get(f"/api/v1/runs?workflow_id={workflow_id}", headers=owner.headers)
    assert runs.status == 200
    items = (await runs.json())["items"]
    assert sorted(run["id"] for run in items) == sorted(run_ids)
    assert all(run["status"] != "cancelled" for run in items)
    assert (
        await client.post("/api/v1/workflows", json=WORKFLOW | {"name": "edit"}, headers=owner.headers)
    ).status == 201

    # Another tenant is not held back by this one.
    other_workflow = await create_workflow(client, neighbour)
    response = await client.post(
        f"/api/v1/workflows/{other_workflow}/execute", json={"input": {}}, headers=neighbour.headers
    )
    assert response.status == 202, await response.text()


async def test_api_keys_do_not_multiply_a_tenants_execute_budget(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    """Each principal (a user, each of its API keys) has its own `execute` budget, and the
    tenant one that all of them spend together: minting keys buys no more run starts."""
    client = await edge_with(
        aiohttp_client, stack, rate_limit_execute_per_minute=3, rate_limit_tenant_execute_per_minute=5
    )
    owner, neighbour = await stack.member(), await stack.member()
    workflow_id = await create_workflow(client, owner)
    execute = f"/api/v1/workflows/{workflow_id}/execute"
    keys = []
    for index in range(3):
        created = await client.post("/api/v1/api-keys", json={"name": f"k{index}"}, headers=owner.headers)
        assert created.status == 201, await created.text()
        keys.append({"X-API-Key": (await created.json())["key"]})

    # Two starts each, in turn: the user, then each key.
    answers = [
        await client.post(execute, json={"input": {}}, headers=headers)
        for headers in [owner.headers, *keys]
        for _ in range(2)
    ]
    assert [answer.status for answer in answers] == [202] * 5 + [429] * 3
    # The headers describe the tighter bucket: at the 5th start the tenant has none left, the key 2.
    assert (answers[4].headers["RateLimit-Limit"], answers[4].headers["RateLimit-Remaining"]) == ("5", "0")
    await assert_rate_limited(answers[5], "execute")
    assert "tenant" in (await answers[5].json())["detail"]
    runs = await (await client.get(f"/api/v1/runs?workflow_id={workflow_id}", headers=owner.headers)).json()
    assert len(runs["items"]) == 5, "a refused start started nothing"

    # Another tenant has a budget of its own.
    other_workflow = await create_workflow(client, neighbour)
    response = await client.post(
        f"/api/v1/workflows/{other_workflow}/execute", json={"input": {}}, headers=neighbour.headers
    )
    assert response.status == 202, await response.text()


async def test_as_shipped_run_starts_have_a_tighter_class_than_writes(stack: Stack) -> None:
    member = await stack.member()
    defaults = EdgeSettings()
    assert defaults.rate_limit_enabled
    assert defaults.rate_limit_execute_per_minute < defaults.rate_limit_write_per_minute
    created = await stack.client.post("/api/v1/workflows", json=WORKFLOW, headers=member.headers)
    assert created.headers["RateLimit-Limit"] == str(defaults.rate_limit_write_per_minute)
    workflow_id = (await created.json())["id"]
    started = await stack.client.post(
        f"/api/v1/workflows/{workflow_id}/execute", json={"input": {}}, headers=member.headers
    )
    assert started.status == 202
    assert started.headers["RateLimit-Limit"] == str(defaults.rate_limit_execute_per_minute)
    run_id = (await started.json())["id"]
    for control in ("pause", "resume", "cancel"):
        response = await stack.client.post(f"/api/v1/runs/{run_id}/{control}", json={}, headers=member.headers)
        assert response.status == 202, (control, await response.text())
        assert response.headers["RateLimit-Limit"] == str(defaults.rate_limit_execute_per_minute), control


async def test_anonymous_run_triggers_are_limited_per_client_ip(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    client = await edge_with(aiohttp_client, stack, rate_limit_public_per_minute=2)
    hook = f"/api/v1/hooks/trg_{uuid.uuid4().hex[:12]}"

    async def call(forwarded: str) -> ClientResponse:
        return await client.post(hook, json={"event": "push"}, headers={"X-Forwarded-For": forwarded})

    first, second = await call("203.0.113.40"), await call("203.0.113.40")
    assert first.status != 429 and second.status != 429
    await assert_rate_limited(await call("203.0.113.40"), "public")
    assert (await call("203.0.113.41")).status != 429

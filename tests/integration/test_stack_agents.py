"""The walking-skeleton slice through every layer: REST edge -> gRPC services -> database,
with real tokens from auth_svc."""

from __future__ import annotations

from typing import Any

from tests.fixtures.stack import Stack

AGENT = {
    "name": "summarizer",
    "url": "https://agent.example.com/run",
    "auth_type": "bearer",
    "auth_config": {"token": "s3cr3t-token"},
}


async def test_signup_login_me_through_the_edge(stack: Stack) -> None:
    member = await stack.member()
    response = await stack.client.get("/api/v1/auth/me", headers=member.headers)
    assert response.status == 200
    me = await response.json()
    assert me["user"]["email"] == member.email
    assert me["tenant"]["id"] == member.tenant_id
    assert me["role"] == "owner"
    assert "agents:write" in me["scopes"]
    assert response.headers["X-Request-ID"]


async def test_agent_lifecycle_over_rest(stack: Stack) -> None:
    member = await stack.member()
    response = await stack.client.post("/api/v1/agents", json=AGENT, headers=member.headers)
    assert response.status == 201, await response.text()
    agent = await response.json()
    assert response.headers["Location"].endswith(f"/api/v1/agents/{agent['id']}")
    assert agent["has_credentials"] is True
    assert "auth_config" not in agent
    assert agent["timeout_ms"] == 30000
    assert agent["retry_config"] == {
        "max_retries": 3,
        "initial_delay_ms": 1000,
        "max_delay_ms": 30000,
        "backoff_multiplier": 2.0,
        "non_retryable_status": [],
    }
    assert agent["status"] == "active"
    assert agent["auth_type"] == "bearer"

    response = await stack.client.patch(
        f"/api/v1/agents/{agent['id']}", json={"description": "summarises"}, headers=member.headers
    )
    assert response.status == 200, await response.text()
    patched = await response.json()
    assert patched["description"] == "summarises"
    assert patched["url"] == AGENT["url"]  # fields absent from the PATCH body stay
    assert patched["etag"] != agent["etag"]

    response = await stack.client.patch(
        f"/api/v1/agents/{agent['id']}", json={"retry_config": {"max_retries": 7}}, headers=member.headers
    )
    assert response.status == 200, await response.text()
    retry = (await response.json())["retry_config"]
    assert (retry["max_retries"], retry["initial_delay_ms"], retry["max_delay_ms"]) == (7, 1000, 30000)

    stale = {**member.headers, "If-Match": f'"{agent["etag"]}"'}
    response = await stack.client.patch(f"/api/v1/agents/{agent['id']}", json={"description": "x"}, headers=stale)
    assert response.status == 412
    assert response.content_type == "application/problem+json"

    response = await stack.client.get("/api/v1/agents", headers=member.headers)
    listed = await response.json()
    assert [a["id"] for a in listed["items"]] == [agent["id"]]
    assert listed["next_page_token"] == ""
    assert "s3cr3t-token" not in await response.text()

    response = await stack.client.delete(f"/api/v1/agents/{agent['id']}", headers=member.headers)
    assert response.status == 204
    assert await response.read() == b""
    response = await stack.client.get(f"/api/v1/agents/{agent['id']}", headers=member.headers)
    assert response.status == 404


async def test_another_tenants_agent_is_not_found(stack: Stack) -> None:
    owner, stranger = await stack.member(), await stack.member()
    response = await stack.client.post("/api/v1/agents", json=AGENT, headers=owner.headers)
    agent_id = (await response.json())["id"]
    path = f"/api/v1/agents/{agent_id}"
    calls: list[tuple[str, dict[str, Any] | None]] = [
        ("GET", None),
        ("PATCH", {"description": "mine"}),
        ("DELETE", None),
    ]
    for method, body in calls:
        response = await stack.client.request(method, path, json=body, headers=stranger.headers)
        assert response.status == 404, (method, await response.text())
        problem = await response.json()
        assert problem["status"] == 404
    response = await stack.client.get("/api/v1/agents", headers=stranger.headers)
    assert (await response.json())["items"] == []
    response = await stack.client.get(path, headers=owner.headers)
    assert response.status == 200
    assert (await response.json())["description"] == ""


async def test_invalid_agents_get_422_with_every_field(stack: Stack) -> None:
    member = await stack.member()
    body = {
        "name": "meta",
        "url": "http://metadata.attacker.example/latest",
        "timeout_ms": 10,
        "retry_config": {"max_retries": 11},
    }
    response = await stack.client.post("/api/v1/agents", json=body, headers=member.headers)
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    fields = {error["field"] for error in problem["errors"]}
    assert {"url", "timeout_ms", "retry_config.max_retries"} <= fields
    assert problem["request_id"] == response.headers["X-Request-ID"]


async def test_duplicate_names_conflict(stack: Stack) -> None:
    member = await stack.member()
    assert (await stack.client.post("/api/v1/agents", json=AGENT, headers=member.headers)).status == 201
    response = await stack.client.post("/api/v1/agents", json=AGENT, headers=member.headers)
    assert response.status == 409


async def test_credentials_are_required_and_checked(stack: Stack) -> None:
    response = await stack.client.get("/api/v1/agents")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await stack.client.get("/api/v1/agents", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status == 401


async def test_the_audit_log_records_the_sign_in(stack: Stack) -> None:
    member = await stack.member()
    response = await stack.client.get("/api/v1/audit-logs", headers=member.headers)
    assert response.status == 200
    actions = [entry["action"] for entry in (await response.json())["items"]]
    assert "auth.login_succeeded" in actions

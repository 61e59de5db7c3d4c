"""OWASP API3 (broken object property level authorization): a client cannot set `tenant_id`,
`role`, `created_by`, `version` or a key's secret. Each attempt is either refused (400 naming the
field) or ignored: the stored value is the server's, never the client's."""

from __future__ import annotations

from typing import Any

from tests.fixtures.stack import PASSWORD, Member, Stack

WORKFLOW = {"name": "mass", "steps": [{"id": "a", "type": "transform", "input": {"x": 1}}]}
AGENT = {"name": "mass-agent", "url": "https://agent.example.com/run"}


async def refused_or_ignored(response: Any, field: str, injected: Any) -> dict[str, Any] | None:
    """None when refused with a 400 about `field`; else the created body, which must not carry
    the injected value."""
    if response.status == 400:
        problem = await response.json()
        assert field in problem["detail"] or any(e["field"] == field for e in problem.get("errors", []))
        return None
    assert 200 <= response.status < 300, await response.text()
    body: dict[str, Any] = await response.json()
    assert body.get(field) != injected, f"the client set {field}"
    return body


async def test_tenant_id_cannot_be_chosen(stack: Stack) -> None:
    alice, bob = await stack.member(), await stack.member()
    attempts = [
        ("/api/v1/agents", {**AGENT, "tenant_id": bob.tenant_id}),
        ("/api/v1/workflows", {**WORKFLOW, "tenant_id": bob.tenant_id}),
        ("/api/v1/api-keys", {"name": "k", "tenant_id": bob.tenant_id}),
        (
            "/api/v1/users",
            {"email": "m@example.com", "password": PASSWORD, "role": "viewer", "tenant_id": bob.tenant_id},
        ),
    ]
    for path, body in attempts:
        response = await stack.client.post(path, json=body, headers=alice.headers)
        created = await refused_or_ignored(response, "tenant_id", bob.tenant_id)
        if created is not None:
            resource = f"{path}/{created['id']}"
            assert (await stack.client.get(resource, headers=bob.headers)).status == 404, path
            assert (await stack.client.get(resource, headers=alice.headers)).status == 200, path


async def test_created_by_version_and_secrets_are_the_servers(stack: Stack) -> None:
    alice = await stack.member()
    workflow = await refused_or_ignored(
        await stack.client.post(
            "/api/v1/workflows", json={**WORKFLOW, "version": 7, "created_by": "usr_evil"}, headers=alice.headers
        ),
        "created_by",
        "usr_evil",
    )
    if workflow is not None:
        assert workflow["version"] == 1
        assert workflow["created_by"] == alice.user_id
    agent = await refused_or_ignored(
        await stack.client.post("/api/v1/agents", json={**AGENT, "created_by": "usr_evil"}, headers=alice.headers),
        "created_by",
        "usr_evil",
    )
    if agent is not None:
        assert agent["created_by"] == alice.user_id
    chosen = "ffk_" + "a" * 43
    key = await refused_or_ignored(
        await stack.client.post(
            "/api/v1/api-keys",
            json={"name": "k", "key": chosen, "created_by": "usr_evil", "prefix": "ffk_aaaaaaaa"},
            headers=alice.headers,
        ),
        "key",
        chosen,
    )
    if key is not None:
        assert key["created_by"] == alice.user_id
        assert key["prefix"] == key["key"][:12]
    assert (await stack.client.get("/api/v1/agents", headers={"X-API-Key": chosen})).status == 401


async def test_roles_cannot_be_self_assigned(stack: Stack) -> None:
    owner = await stack.member()
    email = "climber@example.com"
    signup = await stack.client.post(
        "/api/v1/auth/signup", json={"email": email, "password": PASSWORD, "tenant_name": "t", "role": "admin"}
    )
    assert signup.status == 400
    created = await stack.client.post(
        "/api/v1/users", json={"email": email, "password": PASSWORD, "role": "viewer"}, headers=owner.headers
    )
    viewer_id = (await created.json())["id"]
    login = await stack.client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    viewer = Member(email, owner.tenant_id, viewer_id, (await login.json())["access_token"])
    promoted = await stack.client.patch(f"/api/v1/users/{viewer_id}", json={"role": "admin"}, headers=viewer.headers)
    assert promoted.status == 403
    me = await (await stack.client.get("/api/v1/auth/me", headers=viewer.headers)).json()
    assert me["role"] == "viewer"
    # The admin scope is not requestable by a key of a viewer either.
    response = await stack.client.post(
        "/api/v1/api-keys", json={"name": "k", "scopes": ["admin"]}, headers=viewer.headers
    )
    assert response.status == 403

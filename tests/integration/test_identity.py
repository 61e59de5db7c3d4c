"""Identity through the edge on the real stack: refresh-token rotation and reuse detection,
API keys (shown once, hashed, scoped, revocable everywhere within 5 s), members and roles,
service accounts with the client_credentials grant, and the audit trail of all of it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import jwt

from flowforge.workflow.v1 import agent_service_pb2, agent_service_pb2_grpc
from tests.fixtures.stack import PASSWORD, Member, Stack


async def login(stack: Stack, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await stack.client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def add_member(stack: Stack, admin: Member, role: str) -> tuple[str, dict[str, str], str]:
    """Creates a member with `role`; returns its email, bearer headers and id."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    response = await stack.client.post(
        "/api/v1/users", json={"email": email, "password": PASSWORD, "role": role}, headers=admin.headers
    )
    assert response.status == 201, await response.text()
    user = await response.json()
    assert user["role"] == role
    tokens = await login(stack, email)
    return email, {"Authorization": f"Bearer {tokens['access_token']}"}, user["id"]


async def test_refresh_tokens_rotate_and_reuse_revokes_the_family(stack: Stack) -> None:
    member = await stack.member()
    first = await login(stack, member.email)
    assert first["refresh_token"].startswith("ffr_")
    assert first["token_type"] == "Bearer"

    response = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status == 200, await response.text()
    second = await response.json()
    assert second["refresh_token"] != first["refresh_token"]
    me = await stack.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert me.status == 200

    # The first token again: a thief (or the client after a thief) -> the whole family dies.
    reused = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status == 401
    assert reused.content_type == "application/problem+json"
    after = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert after.status == 401, "the newest token of a reused family must be revoked too"

    # Another sign-in is another family, untouched by the revocation.
    other = await login(stack, member.email)
    response = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert response.status == 200


async def test_logout_revokes_and_never_tells_whether_a_token_existed(stack: Stack) -> None:
    member = await stack.member()
    tokens = await login(stack, member.email)
    response = await stack.client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert response.status == 204
    refused = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refused.status == 401
    unknown = await stack.client.post("/api/v1/auth/logout", json={"refresh_token": "ffr_" + "x" * 43})
    assert unknown.status == 204


async def test_api_keys_are_shown_once_listed_by_prefix_and_work_everywhere(stack: Stack) -> None:
    member = await stack.member()
    body = {"name": "ci", "scopes": ["agents:read", "runs:read"], "expires_in_days": 30}
    response = await stack.client.post("/api/v1/api-keys", json=body, headers=member.headers)
    assert response.status == 201, await response.text()
    created = await response.json()
    key = created["key"]
    assert key.startswith("ffk_") and len(key) >= 40
    assert created["prefix"] == key[:12]
    assert created["scopes"] == ["runs:read", "agents:read"] or set(created["scopes"]) == {"agents:read", "runs:read"}
    assert created["expires_at"]
    assert response.headers["Location"].endswith(f"/api/v1/api-keys/{created['id']}")

    listed = await (await stack.client.get("/api/v1/api-keys", headers=member.headers)).json()
    assert [item["prefix"] for item in listed["items"]] == [created["prefix"]]
    assert "key" not in listed["items"][0]
    fetched = await (await stack.client.get(f"/api/v1/api-keys/{created['id']}", headers=member.headers)).json()
    assert "key" not in fetched

    with_key = {"X-API-Key": key}
    assert (await stack.client.get("/api/v1/agents", headers=with_key)).status == 200
    me = await (await stack.client.get("/api/v1/auth/me", headers=with_key)).json()
    assert me["tenant"]["id"] == member.tenant_id
    assert set(me["scopes"]) == {"agents:read", "runs:read"}
    denied = await stack.client.post(
        "/api/v1/agents", json={"name": "a", "url": "https://agent.example.com/run"}, headers=with_key
    )
    assert denied.status == 403


async def test_a_revoked_key_is_refused_by_the_edge_and_every_service_within_5_seconds(stack: Stack) -> None:
    member = await stack.member()
    created = await (
        await stack.client.post("/api/v1/api-keys", json={"name": "short-lived"}, headers=member.headers)
    ).json()
    key = created["key"]
    workflow_port = stack.services["workflow"].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{workflow_port}") as channel:
        agents = agent_service_pb2_grpc.AgentServiceStub(channel)

        async def service_accepts() -> bool:
            try:
                await agents.ListAgents(agent_service_pb2.ListAgentsRequest(), metadata=[("x-api-key", key)])
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                return False
            return True

        async def edge_accepts() -> bool:
            return (await stack.client.get("/api/v1/agents", headers={"X-API-Key": key})).status == 200

        # Both caches now hold the key as valid.
        assert await service_accepts()
        assert await edge_accepts()
        response = await stack.client.delete(f"/api/v1/api-keys/{created['id']}", headers=member.headers)
        assert response.status == 204
        revoked_at = time.monotonic()
        # auth_svc itself never caches: refused at once.
        me = await stack.client.get("/api/v1/auth/me", headers={"X-API-Key": key})
        assert me.status == 401
        while await service_accepts() or await edge_accepts():
            assert time.monotonic() - revoked_at <= 5.0, "a revoked key still works after 5 s"
            await asyncio.sleep(0.25)
    assert (await stack.client.get(f"/api/v1/api-keys/{created['id']}", headers=member.headers)).status == 404


async def test_keys_never_exceed_their_creator(stack: Stack) -> None:
    owner = await stack.member()
    _, viewer, _ = await add_member(stack, owner, "viewer")
    response = await stack.client.post(
        "/api/v1/api-keys", json={"name": "escalate", "scopes": ["agents:write"]}, headers=viewer
    )
    assert response.status == 403
    response = await stack.client.post("/api/v1/api-keys", json={"name": "bogus", "scopes": ["root"]}, headers=viewer)
    assert response.status == 422
    response = await stack.client.post("/api/v1/api-keys", json={"name": "mine"}, headers=viewer)
    assert response.status == 201
    assert all(scope.endswith(":read") for scope in (await response.json())["scopes"])


async def test_roles_map_to_scopes_and_admins_manage_members(stack: Stack) -> None:
    owner = await stack.member()
    email, viewer, viewer_id = await add_member(stack, owner, "viewer")
    claims = jwt.decode(viewer["Authorization"].split()[1], options={"verify_signature": False})
    assert set(claims["scope"].split()) == {"workflows:read", "runs:read", "agents:read"}
    assert claims["role"] == "viewer"

    agent = {"name": "a", "url": "https://agent.example.com/run"}
    assert (await stack.client.post("/api/v1/agents", json=agent, headers=viewer)).status == 403
    assert (await stack.client.get("/api/v1/agents", headers=viewer)).status == 200
    assert (await stack.client.get("/api/v1/users", headers=viewer)).status == 403

    listed = await (await stack.client.get("/api/v1/users", headers=owner.headers)).json()
    assert {user["email"] for user in listed["items"]} == {owner.email, email}

    promoted = await stack.client.patch(f"/api/v1/users/{viewer_id}", json={"role": "editor"}, headers=owner.headers)
    assert promoted.status == 200, await promoted.text()
    assert (await promoted.json())["role"] == "editor"
    editor = {"Authorization": f"Bearer {(await login(stack, email))['access_token']}"}
    assert (await stack.client.post("/api/v1/agents", json=agent, headers=editor)).status == 201

    owner_grant = await stack.client.post(
        "/api/v1/users",
        json={"email": f"o-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD, "role": "owner"},
        headers=owner.headers,
    )
    assert owner_grant.status == 422
    self_demote = await stack.client.patch(
        f"/api/v1/users/{owner.user_id}", json={"role": "viewer"}, headers=owner.headers
    )
    assert self_demote.status == 409

    assert (await stack.client.delete(f"/api/v1/users/{viewer_id}", headers=owner.headers)).status == 204
    assert (await stack.client.get(f"/api/v1/users/{viewer_id}", headers=owner.headers)).status == 404
    gone = await stack.client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert gone.status == 401

    audit = await (await stack.client.get("/api/v1/audit-logs?entity_type=user", headers=owner.headers)).json()
    actions = [entry["action"] for entry in audit["items"]]
    assert {"user.created", "user.role_changed", "user.deleted"} <= set(actions)
    role_change = next(entry for entry in audit["items"] if entry["action"] == "user.role_changed")
    assert role_change["change"]["role"] == {"before": "viewer", "after": "editor"}


async def test_admins_cannot_touch_owners(stack: Stack) -> None:
    owner = await stack.member()
    _, admin, _ = await add_member(stack, owner, "admin")
    response = await stack.client.patch(f"/api/v1/users/{owner.user_id}", json={"active": False}, headers=admin)
    assert response.status == 403
    response = await stack.client.delete(f"/api/v1/users/{owner.user_id}", headers=admin)
    assert response.status == 403


async def test_users_of_another_tenant_are_invisible(stack: Stack) -> None:
    alice, bob = await stack.member(), await stack.member()
    for method in ("get", "patch", "delete"):
        kwargs: dict[str, Any] = {"json": {"display_name": "x"}} if method == "patch" else {}
        response = await getattr(stack.client, method)(f"/api/v1/users/{bob.user_id}", headers=alice.headers, **kwargs)
        assert response.status == 404, method


async def test_service_accounts_get_tokens_by_client_credentials(stack: Stack) -> None:
    owner = await stack.member()
    response = await stack.client.post(
        "/api/v1/service-accounts", json={"name": "etl", "scopes": ["agents:read"]}, headers=owner.headers
    )
    assert response.status == 201, await response.text()
    account = await response.json()
    assert account["client_secret"].startswith("ffs_")

    form = {
        "grant_type": "client_credentials",
        "client_id": account["client_id"],
        "client_secret": account["client_secret"],
    }
    issued = await stack.client.post("/api/v1/auth/token", data=form)
    assert issued.status == 200, await issued.text()
    token = await issued.json()
    assert token["scope"] == "agents:read"
    assert token["token_type"] == "Bearer"
    assert issued.headers["Cache-Control"] == "no-store"
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await stack.client.get("/api/v1/agents", headers=bearer)).status == 200
    agent = {"name": "a", "url": "https://agent.example.com/run"}
    assert (await stack.client.post("/api/v1/agents", json=agent, headers=bearer)).status == 403

    as_json = await stack.client.post("/api/v1/auth/token", json=form)
    assert as_json.status == 200
    wrong = await stack.client.post("/api/v1/auth/token", json={**form, "client_secret": "ffs_" + "x" * 43})
    assert wrong.status == 401
    too_much = await stack.client.post("/api/v1/auth/token", json={**form, "scope": "agents:write"})
    assert too_much.status == 400
    other_grant = await stack.client.post("/api/v1/auth/token", json={**form, "grant_type": "password"})
    assert other_grant.status == 400


async def test_login_failures_and_key_events_are_audited_without_secrets(stack: Stack) -> None:
    owner = await stack.member()
    failed = await stack.client.post("/api/v1/auth/login", json={"email": owner.email, "password": "wrong-password!"})
    assert failed.status == 401
    created = await (await stack.client.post("/api/v1/api-keys", json={"name": "k"}, headers=owner.headers)).json()
    await stack.client.delete(f"/api/v1/api-keys/{created['id']}", headers=owner.headers)
    response = await stack.client.get("/api/v1/audit-logs?limit=100", headers=owner.headers)
    assert response.status == 200
    text = await response.text()
    assert created["key"] not in text
    assert created["key"][12:] not in text
    actions = {entry["action"] for entry in (await response.json())["items"]}
    assert {"auth.login_failed", "auth.login_succeeded", "api_key.created", "api_key.revoked"} <= actions


async def test_expired_keys_and_refresh_tokens_are_refused(stack: Stack, monkeypatch: Any) -> None:
    import datetime as dt

    from flowforge_common.orm import utcnow

    member = await stack.member()
    tokens = await login(stack, member.email)
    created = await (
        await stack.client.post("/api/v1/api-keys", json={"name": "day", "expires_in_days": 1}, headers=member.headers)
    ).json()
    later = utcnow() + dt.timedelta(days=31)
    monkeypatch.setattr("auth_svc.domain.api_keys.utcnow", lambda: later)
    monkeypatch.setattr("auth_svc.domain.service.utcnow", lambda: later)
    assert (await stack.client.get("/api/v1/auth/me", headers={"X-API-Key": created["key"]})).status == 401
    refused = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refused.status == 401


async def test_the_audit_log_merges_workflow_changes_with_identity_events(stack: Stack) -> None:
    owner = await stack.member()
    agent = {"name": "audited", "url": "https://agent.example.com/run", "auth_type": "bearer",
             "auth_config": {"token": "s3cr3t-token"}}
    created = await (await stack.client.post("/api/v1/agents", json=agent, headers=owner.headers)).json()
    await stack.client.post("/api/v1/api-keys", json={"name": "k"}, headers=owner.headers)
    response = await stack.client.get("/api/v1/audit-logs", headers=owner.headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert "s3cr3t-token" not in await response.text()
    actions = [entry["action"] for entry in body["items"]]
    assert actions[:2] == ["api_key.created", "agent.created"], actions
    assert "auth.login_succeeded" in actions
    stamps = [entry["created_at"] for entry in body["items"]]
    assert stamps == sorted(stamps, reverse=True)

    # Pages walk the merged log without gaps or repeats.
    seen: list[str] = []
    token = ""
    while True:
        page = await (
            await stack.client.get(f"/api/v1/audit-logs?limit=1&page_token={token}", headers=owner.headers)
        ).json()
        seen += [entry["id"] for entry in page["items"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == [entry["id"] for entry in body["items"]]
    only_agent = await (
        await stack.client.get(f"/api/v1/audit-logs?entity_id={created['id']}", headers=owner.headers)
    ).json()
    assert [entry["action"] for entry in only_agent["items"]] == ["agent.created"]

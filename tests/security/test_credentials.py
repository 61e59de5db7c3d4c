"""OWASP API2 (broken authentication): refresh-token reuse (also when two refreshes race), a
revoked API key refused by the edge and by every gRPC service within 5 s, sign-in answers
that never reveal whether an email has an account, and WebSocket auth messages verified by the
edge like headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc

from auth_svc.domain.tokens import load_signing_key
from edge.streams import WS_CLOSE_UNAUTHENTICATED
from flowforge.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flowforge.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from flowforge.workflow.v1 import agent_service_pb2, agent_service_pb2_grpc
from flowforge_common.auth import ALL_SCOPES
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.stack import PASSWORD, Stack


async def test_racing_refreshes_leave_at_most_one_winner_and_a_dead_family(stack: Stack) -> None:
    member = await stack.member()
    login = await (
        await stack.client.post("/api/v1/auth/login", json={"email": member.email, "password": PASSWORD})
    ).json()
    token = login["refresh_token"]
    responses = await asyncio.gather(
        *(stack.client.post("/api/v1/auth/refresh", json={"refresh_token": token}) for _ in range(3))
    )
    statuses = sorted(response.status for response in responses)
    assert statuses.count(200) <= 1
    assert statuses.count(401) >= 2
    # Whoever won holds a token of a family the losers' reuse revoked.
    for response in responses:
        if response.status == 200:
            winner = (await response.json())["refresh_token"]
            again = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": winner})
            assert again.status == 401


async def test_a_revoked_key_is_refused_by_every_service_within_5_seconds(stack: Stack) -> None:
    member = await stack.member()
    created = await (
        await stack.client.post("/api/v1/api-keys", json={"name": "everywhere"}, headers=member.headers)
    ).json()
    metadata = [("x-api-key", created["key"])]
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") for name, svc in stack.services.items()}
    try:
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "auth": lambda: auth_service_pb2_grpc.AuthServiceStub(channels["auth"]).GetMe(
                auth_service_pb2.GetMeRequest(), metadata=metadata
            ),
            "workflow": lambda: agent_service_pb2_grpc.AgentServiceStub(channels["workflow"]).ListAgents(
                agent_service_pb2.ListAgentsRequest(), metadata=metadata
            ),
            "execution": lambda: execution_service_pb2_grpc.ExecutionServiceStub(channels["execution"]).ListRuns(
                execution_service_pb2.ListRunsRequest(), metadata=metadata
            ),
        }

        async def accepted(name: str) -> bool:
            try:
                await calls[name]()
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, error.code())
                return False
            return True

        for name in calls:
            assert await accepted(name), f"{name} refused a valid key"
        assert (await stack.client.get("/api/v1/runs", headers={"X-API-Key": created["key"]})).status == 200

        deleted = await stack.client.delete(f"/api/v1/api-keys/{created['id']}", headers=member.headers)
        assert deleted.status == 204
        revoked_at = time.monotonic()
        pending = set(calls) | {"edge"}
        while pending:
            for name in list(pending):
                if name == "edge":
                    still = (await stack.client.get("/api/v1/runs", headers={"X-API-Key": created["key"]})).status
                    if still == 401:
                        pending.discard(name)
                elif not await accepted(name):
                    pending.discard(name)
            assert time.monotonic() - revoked_at <= 5.0, f"still accepted after 5 s by {sorted(pending)}"
            await asyncio.sleep(0.2)
    finally:
        for channel in channels.values():
            await channel.close()


async def test_sign_in_answers_do_not_reveal_accounts(stack: Stack) -> None:
    member = await stack.member()
    wrong_password = await stack.client.post(
        "/api/v1/auth/login", json={"email": member.email, "password": "wrong-password-1"}
    )
    no_account = await stack.client.post(
        "/api/v1/auth/login", json={"email": "nobody-here@example.com", "password": "wrong-password-1"}
    )
    assert wrong_password.status == no_account.status == 401
    first, second = await wrong_password.json(), await no_account.json()
    assert (first["type"], first["detail"]) == (second["type"], second["detail"])
    bad_refresh = await stack.client.post("/api/v1/auth/refresh", json={"refresh_token": "ffr_" + "z" * 43})
    assert bad_refresh.status == 401
    bad_client = await stack.client.post(
        "/api/v1/auth/token",
        json={"grant_type": "client_credentials", "client_id": "ffc_nobody", "client_secret": "ffs_nothing"},
    )
    assert bad_client.status == 401


async def test_websocket_auth_messages_are_verified_by_the_edge(stack: Stack, database: DatabaseTarget) -> None:
    member = await stack.member()
    created = await (await stack.client.post("/api/v1/api-keys", json={"name": "ws"}, headers=member.headers)).json()

    async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, object]:
        message = await ws.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        document: dict[str, object] = json.loads(message.data)
        return document

    ws = await stack.client.ws_connect("/api/v1/ws")
    await ws.send_json({"action": "auth", "token": created["key"]})
    assert await receive(ws) == {"type": "authenticated"}
    await ws.send_json({"action": "subscribe", "workflow_id": "wf_anything"})
    assert await receive(ws) == {"type": "subscribed", "subscription": {"workflow_id": "wf_anything"}}
    await ws.close()

    # Signed by auth_svc's own key, for the member, but expired: the signature alone is not enough.
    now = int(time.time())
    expired = load_signing_key(None, database.data_dir).sign(
        {
            "iss": "flowforge",
            "aud": "flowforge-api",
            "sub": member.user_id,
            "tid": member.tenant_id,
            "scope": " ".join(ALL_SCOPES),
            "iat": now - 7200,
            "exp": now - 3600,
        }
    )
    for token in (expired, "ffk_" + "z" * 43, member.token[:-4] + "AAAA"):
        ws = await stack.client.ws_connect("/api/v1/ws")
        await ws.send_json({"action": "auth", "token": token})
        error = await receive(ws)
        assert (error["type"], error["status"], error["action"]) == ("error", 401, "auth")
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == WS_CLOSE_UNAUTHENTICATED

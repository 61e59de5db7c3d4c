"""`/api/v1/ws` first-message authentication: the edge verifies the token with the same
authenticator as the HTTP routes before it keeps it, so a forged or expired token closes the
socket (error message, then close code 4401) and no service ever hears of it."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.streams import WS_CLOSE_UNAUTHENTICATED
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.tokens import TokenFactory

Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend) -> Client:
    return await aiohttp_client(create_app(edge_settings(backend.target, ws_auth_timeout_seconds=5)))


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    document: dict[str, Any] = json.loads(message.data)
    return document


async def assert_refused(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The refusal: one error message naming the auth action and 401, then a 4401 close."""
    error = await receive(ws)
    assert error["type"] == "error"
    assert error["action"] == "auth"
    assert error["status"] == 401
    assert error["reason"] == "UNAUTHENTICATED"
    assert error["detail"]
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE, closing
    assert closing.data == WS_CLOSE_UNAUTHENTICATED
    assert ws.close_code == WS_CLOSE_UNAUTHENTICATED
    return error


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c3JfeCJ9.",  # alg none
        "Bearer twice",
    ],
)
async def test_a_bad_token_is_refused_at_the_edge(client: Client, backend: EchoBackend, token: str) -> None:
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"action": "auth", "token": token})
    await assert_refused(ws)
    assert backend.recorder.calls == []


async def test_a_forged_or_expired_token_is_refused_and_no_service_is_called(
    client: Client, backend: EchoBackend, tokens: TokenFactory
) -> None:
    expired = tokens.mint(ttl=-3600)
    forged = TokenFactory(kid=tokens.kid).mint()  # right kid, another key
    wrong_audience = tokens.mint(aud="someone-else")
    for token in (expired, forged, wrong_audience):
        ws = await client.ws_connect("/api/v1/ws")
        await ws.send_json({"action": "auth", "token": token})
        await assert_refused(ws)
        await ws.close()
    assert backend.recorder.calls == []


async def test_a_bad_token_replacing_good_credentials_closes_the_socket(
    client: Client, backend: EchoBackend, tokens: TokenFactory
) -> None:
    ws = await client.ws_connect("/api/v1/ws", headers={"Authorization": f"Bearer {tokens.mint()}"})
    await ws.send_json({"action": "auth", "token": tokens.mint(ttl=-3600)})
    await assert_refused(ws)
    assert backend.recorder.calls == []


async def test_a_good_token_authenticates_and_its_subscriptions_reach_the_service(
    client: Client, backend: EchoBackend, tokens: TokenFactory
) -> None:
    token = tokens.mint(tenant_id="ten_ws", subject="usr_ws")
    ws = await client.ws_connect("/api/v1/ws")
    await ws.send_json({"action": "subscribe", "run_id": "run_1"})
    assert "authenticate first" in (await receive(ws))["detail"]
    await ws.send_json({"action": "auth"})  # a malformed message: an error, the socket stays open
    assert "needs a `token`" in (await receive(ws))["detail"]
    await ws.send_json({"action": "auth", "token": token})
    assert await receive(ws) == {"type": "authenticated"}
    await ws.send_json({"action": "subscribe", "run_id": "run_1", "after": 4})
    assert await receive(ws) == {"type": "subscribed", "subscription": {"run_id": "run_1"}}
    event = await receive(ws)
    assert (event["type"], event["event"], event["seq"], event["run_id"]) == ("event", "workflow.completed", 5, "run_1")
    assert await receive(ws) == {"type": "end", "subscription": {"run_id": "run_1"}}
    assert not ws.closed
    await ws.close()
    call = backend.recorder.last("WatchRun")
    assert call.metadata["authorization"] == f"Bearer {token}"
    assert call.request.after_seq == 4


async def test_an_anonymous_socket_is_closed_at_the_auth_deadline_however_chatty(
    aiohttp_client: AiohttpClient, backend: EchoBackend
) -> None:
    client = await aiohttp_client(create_app(edge_settings(backend.target, ws_auth_timeout_seconds=0.5)))
    ws = await client.ws_connect("/api/v1/ws")
    for _ in range(3):
        await ws.send_json({"action": "subscribe", "run_id": "run_1"})
        assert (await receive(ws))["type"] == "error"
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert closing.data == WS_CLOSE_UNAUTHENTICATED
    assert backend.recorder.calls == []

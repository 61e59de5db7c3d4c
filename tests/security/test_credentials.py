"""OWASP API2 (broken authentication): refresh-token reuse (also when two refreshes race), a
revoked API key refused by the edge and by every gRPC service within 5 s, and sign-in answers
that never reveal whether an email has an account."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from flowforge.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flowforge.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from flowforge.workflow.v1 import agent_service_pb2, agent_service_pb2_grpc
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

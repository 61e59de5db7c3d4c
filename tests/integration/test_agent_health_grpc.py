"""CheckAgentHealth and GetAgentStatus over a real gRPC server, on SQLite and PostgreSQL, probing
a real aiohttp server on loopback (hence `allow-private`): credentials, timeouts, non-2xx,
redirects not followed, the network policy checked again at probe time, tenant isolation."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf import struct_pb2
from sqlalchemy import text

from flowforge.workflow.v1 import agent_pb2
from flowforge.workflow.v1 import agent_service_pb2 as pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.netpolicy import AgentNetworkMode
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import (
    PUBLIC_HOST,
    PUBLIC_URL,
    StubResolver,
    agent_stub,
    bearer,
    running_workflow_service,
)
from workflow_svc.domain.health import RECENT_PROBES

Metadata = list[tuple[str, str]]
Stub = pb_grpc.AgentServiceStub
HEALTHY = agent_pb2.AGENT_HEALTH_STATUS_HEALTHY
UNHEALTHY = agent_pb2.AGENT_HEALTH_STATUS_UNHEALTHY


class FakeAgent:
    """Health endpoints that answer as told and remember each request's headers by path."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, str]]] = {}
        self.app = web.Application()
        self.app.router.add_get("/ok/health", self._answer(200))
        self.app.router.add_get("/fail/health", self._answer(500))
        self.app.router.add_get("/ready", self._answer(204))
        self.app.router.add_get("/slow/health", self._slow)
        self.app.router.add_get("/moved/health", self._moved)

    def _record(self, request: web.Request) -> None:
        self.seen.setdefault(request.path, []).append(dict(request.headers))

    def _answer(self, status: int) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            self._record(request)
            return web.Response(status=status)

        return handler

    async def _slow(self, request: web.Request) -> web.Response:
        self._record(request)
        await asyncio.sleep(5)
        return web.Response()

    async def _moved(self, request: web.Request) -> web.Response:
        self._record(request)
        raise web.HTTPFound("/ok/health")


@pytest.fixture
async def fake_agent(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> AsyncIterator[tuple[FakeAgent, str]]:
    agent = FakeAgent()
    server = await aiohttp_server(agent.app, host="127.0.0.1")
    yield agent, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def service(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    async with running_workflow_service(database, tokens, network=AgentNetworkMode.ALLOW_PRIVATE) as running:
        yield running


@pytest.fixture
async def stub(service: RunningService) -> AsyncIterator[Stub]:
    async with agent_stub(service) as client:
        yield client


@pytest.fixture
def editor(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id="ten_acme", scopes=ALL_SCOPES))


async def register(stub: Stub, metadata: Metadata, url: str, **fields: Any) -> agent_pb2.Agent:
    request = pb.CreateAgentRequest(agent=agent_pb2.Agent(name=fields.pop("name", "agent"), url=url, **fields))
    return (await stub.CreateAgent(request, metadata=metadata)).agent


async def check(stub: Stub, metadata: Metadata, agent_id: str) -> agent_pb2.AgentHealth:
    return (await stub.CheckAgentHealth(pb.CheckAgentHealthRequest(id=agent_id), metadata=metadata)).health


def credentials(**values: str) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def test_a_healthy_agent_is_probed_with_its_credentials(
    stub: Stub, editor: Metadata, fake_agent: tuple[FakeAgent, str]
) -> None:
    agent, base = fake_agent
    bearer_agent = await register(
        stub,
        editor,
        f"{base}/ok/",
        auth_type=agent_pb2.AGENT_AUTH_TYPE_BEARER,
        auth_config=credentials(token="s3cr3t-token"),
    )

    health = await check(stub, editor, bearer_agent.id)

    assert (health.status, health.detail) == (HEALTHY, "HTTP 200 OK")
    assert 0 <= health.latency_ms < 5000
    assert abs(health.checked_at.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    (request,) = agent.seen["/ok/health"]  # url + "/health", the trailing slash not doubled
    assert request["Authorization"] == "Bearer s3cr3t-token"

    apikey_agent = await register(
        stub,
        editor,
        f"{base}/ok",
        name="keyed",
        health_url=f"{base}/ready",
        auth_type=agent_pb2.AGENT_AUTH_TYPE_APIKEY,
        auth_config=credentials(key="k-123", header="X-Agent-Key"),
    )
    health = await check(stub, editor, apikey_agent.id)
    assert (health.status, health.detail) == (HEALTHY, "HTTP 204 No Content")
    (request,) = agent.seen["/ready"]
    assert request["X-Agent-Key"] == "k-123"
    assert "Authorization" not in request


async def test_failures_are_unhealthy_with_the_reason(
    stub: Stub, editor: Metadata, fake_agent: tuple[FakeAgent, str], unused_tcp_port: int
) -> None:
    agent, base = fake_agent
    failing = await register(stub, editor, f"{base}/fail", name="failing")
    slow = await register(stub, editor, f"{base}/slow", name="slow", timeout_ms=1000)
    moved = await register(stub, editor, f"{base}/moved", name="moved")
    closed = await register(stub, editor, f"http://127.0.0.1:{unused_tcp_port}", name="closed")

    health = await check(stub, editor, failing.id)
    assert (health.status, health.detail) == (UNHEALTHY, "HTTP 500 Internal Server Error")

    health = await check(stub, editor, slow.id)
    assert (health.status, health.detail) == (UNHEALTHY, "no answer within 1000 ms")
    assert 1000 <= health.latency_ms < 3000

    health = await check(stub, editor, moved.id)
    assert (health.status, health.detail) == (UNHEALTHY, "HTTP 302 Found (redirects are not followed)")
    assert "/ok/health" not in agent.seen

    health = await check(stub, editor, closed.id)
    assert health.status == UNHEALTHY
    assert health.detail.startswith("connection failed: ")


async def test_status_reports_the_recent_probes(
    service: RunningService, stub: Stub, editor: Metadata, fake_agent: tuple[FakeAgent, str]
) -> None:
    _, base = fake_agent
    created = await register(stub, editor, f"{base}/ok")

    async def status() -> agent_pb2.AgentRuntimeStatus:
        return (await stub.GetAgentStatus(pb.GetAgentStatusRequest(id=created.id), metadata=editor)).status

    before = await status()
    assert before == agent_pb2.AgentRuntimeStatus(status=agent_pb2.AGENT_STATUS_ACTIVE)
    assert (before.in_flight, before.circuit) == (0, agent_pb2.CIRCUIT_STATE_UNSPECIFIED)

    latencies = [(await check(stub, editor, created.id)).latency_ms for _ in range(3)]
    await stub.UpdateAgent(
        pb.UpdateAgentRequest(
            id=created.id,
            agent=agent_pb2.Agent(url=f"{base}/fail", status=agent_pb2.AGENT_STATUS_INACTIVE),
            update_mask={"paths": ["url", "status"]},
        ),
        metadata=editor,
    )
    latencies.append((await check(stub, editor, created.id)).latency_ms)

    after = await status()
    assert after.status == agent_pb2.AGENT_STATUS_INACTIVE
    assert after.recent_success_rate == pytest.approx(0.75)
    assert after.p50_latency_ms == sorted(latencies)[1]
    assert (after.in_flight, after.circuit) == (0, agent_pb2.CIRCUIT_STATE_UNSPECIFIED)

    # Only the most recent probes are kept.
    for _ in range(RECENT_PROBES):
        await check(stub, editor, created.id)
    assert (await status()).recent_success_rate == 0.0
    assert service.engine is not None
    async with service.engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT count(*) FROM agent_health_probes WHERE agent_id = :id"), {"id": created.id}
        )
    assert stored == RECENT_PROBES


async def test_the_network_policy_is_checked_again_at_probe_time(
    database: DatabaseTarget, tokens: TokenFactory
) -> None:
    resolver = StubResolver()
    editor = bearer(tokens.mint(tenant_id="ten_acme", scopes=ALL_SCOPES))
    async with running_workflow_service(database, tokens, resolver=resolver) as service, agent_stub(service) as stub:
        created = await register(stub, editor, PUBLIC_URL)  # public-only: the name resolves publicly
        resolver.table[PUBLIC_HOST] = ["127.0.0.1"]  # ...then moves to loopback (DNS rebinding)

        health = await check(stub, editor, created.id)

    assert health.status == UNHEALTHY
    assert health.detail == (
        "refused by the agent network policy: health_url points at agent.example.com (127.0.0.1), in the loopback "
        "range, which agents may use only when FLOWFORGE_AGENT_NETWORK=allow-private"
    )


async def test_another_tenants_agent_is_not_found(stub: Stub, editor: Metadata, tokens: TokenFactory) -> None:
    created = await register(stub, editor, PUBLIC_URL)
    outsider = bearer(tokens.mint(tenant_id="ten_globex", scopes=ALL_SCOPES))
    for call in [
        stub.CheckAgentHealth(pb.CheckAgentHealthRequest(id=created.id), metadata=outsider),
        stub.GetAgentStatus(pb.GetAgentStatusRequest(id=created.id), metadata=outsider),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

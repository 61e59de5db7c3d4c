"""System routes: liveness, readiness over each service's gRPC health (real execution_svc, echo
servers for the others), service status and Prometheus metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from execution_svc.server import create_server
from execution_svc.settings import ExecutionSettings
from flowforge_common.service import RunningService
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory

Client = TestClient[Any, Any]
SERVICE_NAMES = {
    "flowforge.auth.v1.AuthService",
    "flowforge.workflow.v1.AgentService",
    "flowforge.workflow.v1.WorkflowService",
    "flowforge.execution.v1.ExecutionService",
}


@pytest.fixture
async def execution(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    settings = ExecutionSettings(
        port=0, database_url=database.url, db_schema=database.schema, data_dir=database.data_dir
    )
    service = await create_server(settings, verifier=tokens.verifier())
    yield service
    await service.stop(0)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend, execution: RunningService) -> Client:
    settings = edge_settings(backend.target, execution_target=f"127.0.0.1:{execution.port}")
    return await aiohttp_client(create_app(settings))


async def test_health_is_always_ok(client: Client) -> None:
    response = await client.get("/health")
    assert (response.status, await response.json()) == (200, {"status": "ok"})


async def test_ready_when_every_service_serves(client: Client) -> None:
    response = await client.get("/health/ready")
    body = await response.json()
    assert response.status == 200
    assert body == {"status": "ready", "checks": dict.fromkeys(SERVICE_NAMES, "serving"), "rate_limiter": "memory"}


async def test_not_ready_when_a_database_is_down_or_a_service_is_gone(
    client: Client, execution: RunningService, tokens: TokenFactory
) -> None:
    # What execution_svc's readiness watcher does when its database stops answering.
    await execution.grpc.set_serving(False)
    response = await client.get("/health/ready")
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["checks"]["flowforge.execution.v1.ExecutionService"] == "not_serving"
    assert problem["checks"]["flowforge.auth.v1.AuthService"] == "serving"
    assert "ExecutionService is not_serving" in problem["detail"]
    auth = {"Authorization": f"Bearer {tokens.mint()}"}
    status = await (await client.get("/api/v1/status", headers=auth)).json()
    assert status["status"] == "degraded"

    await execution.grpc.server.stop(0)
    gone = await (await client.get("/health/ready")).json()
    assert gone["checks"]["flowforge.execution.v1.ExecutionService"] == "unavailable"


async def test_status_summarises_services(client: Client, tokens: TokenFactory) -> None:
    auth = {"Authorization": f"Bearer {tokens.mint()}"}
    body = await (await client.get("/api/v1/status", headers=auth)).json()
    assert body == {"status": "ok", "services": dict.fromkeys(SERVICE_NAMES, "serving")}


async def test_metrics_count_requests_by_route_template(client: Client, tokens: TokenFactory) -> None:
    auth = {"Authorization": f"Bearer {tokens.mint()}"}
    await client.get("/api/v1/agents/agt_1", headers=auth)
    await client.get("/api/v1/agents/agt_2", headers=auth)
    await client.get("/api/v1/agents/fail.NOT_FOUND.NOT_FOUND", headers=auth)
    await client.get("/no/such/route")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'flowforge_edge_requests_total{method="GET",route="/api/v1/agents/{id}",status="200"} 2.0' in text
    assert 'flowforge_edge_requests_total{method="GET",route="/api/v1/agents/{id}",status="404"} 1.0' in text
    assert 'flowforge_edge_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'flowforge_edge_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/agents/{id}"' in text


async def test_every_app_has_its_own_metrics(aiohttp_client: AiohttpClient, backend: EchoBackend) -> None:
    first = await aiohttp_client(create_app(edge_settings(backend.target)))
    second = await aiohttp_client(create_app(edge_settings(backend.target)))
    await first.get("/health")
    assert 'route="/health"' in await (await first.get("/metrics")).text()
    assert 'route="/health"' not in await (await second.get("/metrics")).text()

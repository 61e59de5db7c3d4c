"""The edge in front of the real execution_svc (before its engine milestone): the service's
authentication and scope checks, and its UNIMPLEMENTED, come back as problem+json."""

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
from tests.edge.support import edge_settings
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory


@pytest.fixture
async def execution(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    settings = ExecutionSettings(
        port=0, database_url=database.url, db_schema=database.schema, data_dir=database.data_dir
    )
    service = await create_server(settings, verifier=tokens.verifier())
    yield service
    await service.stop(0)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, execution: RunningService, tokens: TokenFactory
) -> TestClient[Any, Any]:
    # No auth_svc here: the edge trusts the test key directly.
    return await aiohttp_client(create_app(edge_settings(f"127.0.0.1:{execution.port}"), verifier=tokens.verifier()))


async def test_no_token_is_401_with_a_bearer_challenge(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/v1/runs/run_x")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "https://flowforge.dev/problems/unauthenticated"


async def test_a_token_without_the_scope_is_403(client: TestClient[Any, Any], tokens: TokenFactory) -> None:
    viewer = tokens.mint(scopes=("runs:read",))
    response = await client.post("/api/v1/runs/run_x/cancel", headers={"Authorization": f"Bearer {viewer}"})
    assert response.status == 403
    problem = await response.json()
    assert "runs:execute" in problem["detail"]


async def test_a_good_token_reaches_the_unimplemented_rpc(client: TestClient[Any, Any], tokens: TokenFactory) -> None:
    response = await client.get("/api/v1/stats", headers={"Authorization": f"Bearer {tokens.mint()}"})
    assert response.status == 501
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "https://flowforge.dev/problems/unimplemented"
